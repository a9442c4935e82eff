# Two targets, each doing all set-up on a fresh machine:
#   make test   virtual environment + dependencies + the test suite
#   make demo   virtual environment + dependencies + mini corpus + distillation demo + export check
#               + a small cross-task robustness report (~4 min idle on 2 cores, plus the install)
PYTHON ?= python3
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
DEMO_OUTPUT ?= demo_output

.PHONY: test lint format demo report venv benchmark clean lock

venv: $(VENV)/.installed

# requirements.txt says what the package needs, requirements-dev.txt adds the test and lint tools;
# constraints.txt pins the whole tested working set
# (refresh it with `make lock`).
$(VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install --quiet --upgrade pip
	$(VENV_PYTHON) -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	$(VENV_PYTHON) -m pip install --quiet --no-deps -e .
	touch $@

# Two pytest workers, one thread each (the machine has 2 cores); a test file stays on one worker, so its
# module-scoped recipe run is shared by its assertions. The slowest tests are listed at the end.
test: venv
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(VENV_PYTHON) -m pytest -q -n 2 --dist loadfile --durations=15 \
		tests --doctest-modules robustdistiller

# ruff's checks and its formatter in check mode (pyproject.toml [tool.ruff]); `make format` applies it.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .

demo: venv
	HF_HUB_OFFLINE=1 $(VENV_PYTHON) -m robustdistiller.demo --output $(DEMO_OUTPUT)

# The cross-task robustness report of a spec (docs/report.md).
REPORT_SPEC ?= recipes/report_example.yaml
report: venv
	HF_HUB_OFFLINE=1 $(VENV_PYTHON) -m robustdistiller.report $(REPORT_SPEC)

benchmark: venv
	HF_HUB_OFFLINE=1 $(VENV_PYTHON) benchmarks/benchmark_step.py

# Re-resolve requirements-dev.txt alone in a fresh venv and pin what it installs (docs/testing.md, "Pinned dependencies").
LOCK_VENV := .venv-lock
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet -r requirements-dev.txt
	{ sed -n '/^#/p' constraints.txt; \
	  $(LOCK_VENV)/bin/python -m pip freeze --all | grep -v -E '^(pip|setuptools|wheel)=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf $(LOCK_VENV)

clean:
	rm -rf $(VENV) $(DEMO_OUTPUT)
