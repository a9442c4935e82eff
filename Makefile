# Two targets, each doing all set-up on a fresh machine:
#   make test   virtual environment + dependencies + the test suite
#   make demo   virtual environment + dependencies + mini corpus + distillation demo + export check
#               + a small cross-task robustness report (~10 min on 2 cores)
PYTHON ?= python3
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
DEMO_OUTPUT ?= demo_output

.PHONY: test demo report venv benchmark clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install --quiet --upgrade pip
	$(VENV_PYTHON) -m pip install --quiet -r requirements.txt
	$(VENV_PYTHON) -m pip install --quiet --no-deps -e .
	touch $@

# Two pytest workers, one thread each (the machine has 2 cores); a test file stays on one worker, so its
# module-scoped recipe run is shared by its assertions. The slowest tests are listed at the end.
test: venv
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(VENV_PYTHON) -m pytest -q -n 2 --dist loadfile --durations=15 \
		tests --doctest-modules robustdistiller

demo: venv
	HF_HUB_OFFLINE=1 $(VENV_PYTHON) -m robustdistiller.demo --output $(DEMO_OUTPUT)

# The cross-task robustness report of a spec (README: "Cross-task robustness report").
REPORT_SPEC ?= recipes/report_example.yaml
report: venv
	HF_HUB_OFFLINE=1 $(VENV_PYTHON) -m robustdistiller.report $(REPORT_SPEC)

benchmark: venv
	HF_HUB_OFFLINE=1 $(VENV_PYTHON) benchmarks/benchmark_step.py

clean:
	rm -rf $(VENV) $(DEMO_OUTPUT)
