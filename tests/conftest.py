"""Shared fixtures: a small generated corpus in the real layouts and a tiny random-weight teacher.

Nothing here reaches the network: the teacher is built from a config and saved locally, the audio is
synthesised.
"""

import importlib.util
import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def mini_corpus(tmp_path_factory):
    """Paths (``librispeech``, ``musan``, ``rirs``) of a small generated corpus."""
    from robustdistiller.testing.mini_corpus import generate_mini_corpus

    return generate_mini_corpus(
        str(tmp_path_factory.mktemp("corpus")),
        seed=0,
        train_speakers=3,
        valid_speakers=2,
        utterances_per_speaker=4,
    )


@pytest.fixture(scope="session")
def tiny_teacher_folder(tmp_path_factory):
    """Local folder of a tiny 12-layer WavLM with random weights."""
    from robustdistiller.models.teacher import save_random_teacher

    return save_random_teacher(str(tmp_path_factory.mktemp("teacher")), model_type="wavlm", tiny=True, seed=0)


def tiny_overrides(mini_corpus, teacher_folder, output_folder, **extra):
    """Overrides that shrink the real recipe to the mini corpus and the tiny teacher."""
    overrides = {
        "data_folder": mini_corpus["librispeech"],
        "musan_folder": mini_corpus["musan"],
        "urbansound_folder": mini_corpus.get("urbansound"),
        "rir_folder": mini_corpus["rirs"],
        "rirs_noises_subsets": ["simulated", "real"],
        "train_splits": ["train-clean-100"],
        "valid_splits": ["dev-clean"],
        "teacher_source": teacher_folder,
        "output_folder": output_folder,
        "enhancement_input_size": 32,  # the tiny teacher's CNN width
        "max_crop_samples": 16000,
        "batch_size": 4,
        "batches_per_bucket": 2,
        "num_workers": 0,
        "log_interval": 1,
        "valid_dataloader_opts": {"batch_size": 4, "num_workers": 0},
    }
    overrides.update(extra)
    return overrides


def as_command_line(overrides):
    """``--key=value`` arguments (values as JSON, which YAML reads)."""
    return [f"--{key}={json.dumps(value)}" for key, value in overrides.items()]


def load_train_module():
    """Imports the recipe's ``train.py`` as a module (for ``dataio_prepare`` and ``prepare_data``)."""
    spec = importlib.util.spec_from_file_location("recipe_train", os.path.join(REPOSITORY_ROOT, "train.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def trained_run(mini_corpus, tiny_teacher_folder, tmp_path_factory):
    """Output folder of a 4-step RobustDistiller run of the real recipe (tiny teacher, mini corpus)."""
    import subprocess
    import sys

    output = str(tmp_path_factory.mktemp("trained") / "run")
    overrides = tiny_overrides(mini_corpus, tiny_teacher_folder, output, number_of_steps=4)
    command = [
        sys.executable,
        os.path.join(REPOSITORY_ROOT, "train.py"),
        os.path.join(REPOSITORY_ROOT, "hparams", "distill.yaml"),
    ] + as_command_line(overrides)
    completed = subprocess.run(command, cwd=REPOSITORY_ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return output


def run_recipe_script(recipe_folder, hparams_file, overrides, timeout=600):
    """Runs ``recipes/<recipe_folder>/train.py <hparams_file>`` with overrides in a subprocess.

    The package is put on ``PYTHONPATH`` (as ``pip install -e .`` would) and the hub is disabled.
    Returns ``(returncode, combined output)``.
    """
    import subprocess
    import sys

    folder = os.path.join(REPOSITORY_ROOT, "recipes", recipe_folder)
    # one thread: tiny models gain nothing from more, and a busy machine loses a lot (oversubscription)
    environment = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=REPOSITORY_ROOT, OMP_NUM_THREADS="1")
    command = [sys.executable, "train.py", hparams_file] + as_command_line(overrides)
    completed = subprocess.run(command, cwd=folder, env=environment, capture_output=True, text=True, timeout=timeout)
    return completed.returncode, completed.stdout[-6000:] + completed.stderr[-6000:]


def corruption_overrides(mini_corpus):
    """Test-only noise and RIRs of the downstream recipes, from the mini corpus."""
    return {"test_musan_folder": mini_corpus["musan"], "test_rir_folder": mini_corpus["rirs"]}


def folder_snapshot(*folders):
    """(relative path -> size, modification time, SHA-256) of every file under ``folders``.

    Reliability tests compare snapshots taken before and after a run: no input file may change.
    """
    import hashlib

    snapshot = {}
    for folder in folders:
        for root, _, files in os.walk(folder):
            for name in files:
                path = os.path.join(root, name)
                with open(path, "rb") as fin:
                    digest = hashlib.sha256(fin.read()).hexdigest()
                status = os.stat(path)
                snapshot[path] = (status.st_size, status.st_mtime_ns, digest)
    return snapshot
