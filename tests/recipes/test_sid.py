"""SID recipe (VoxCeleb1): prepare -> train -> test on clean and corrupted audio, on the fixture."""

from pathlib import Path
import json
import os

import pytest
import torch

from tests.conftest import corruption_overrides, run_recipe_script

from robustdistiller.testing.fixtures.voxceleb1 import generate_voxceleb1


@pytest.fixture(scope="module")
def voxceleb1(tmp_path_factory):
    return generate_voxceleb1(str(tmp_path_factory.mktemp("vox")), seed=0, utterances_per_video=4)


def sid_overrides(voxceleb1, upstream, output, mini_corpus, **extra):
    overrides = {
        "data_folder": voxceleb1,
        "upstream_source": upstream,
        "output_folder": output,
        "num_speakers": 12,
        "lr": 0.01,
        "number_of_epochs": 30,
        "grad_accumulation_factor": 1,  # the full recipe: 8 x 4 (s3prl); tiny runs update every batch
        "max_train_samples": 48000,
        "train_dataloader_opts": {"batch_size": 4, "shuffle": True, "num_workers": 0},
        "valid_dataloader_opts": {"batch_size": 4, "num_workers": 0},
        "test_condition_names": ["clean", "snr5", "reverb"],
        **corruption_overrides(mini_corpus),
    }
    overrides.update(extra)
    return overrides


@pytest.mark.parametrize("upstream_kind", ["student", "hf"])
def test_sid_learns_and_reports_every_condition(
    voxceleb1, mini_corpus, trained_run, tiny_teacher_folder, tmp_path, upstream_kind
):
    upstream = trained_run if upstream_kind == "student" else tiny_teacher_folder
    output = str(tmp_path / "sid")
    code, log = run_recipe_script(
        "VoxCeleb1/SID", "hparams/superb_sid.yaml", sid_overrides(voxceleb1, upstream, output, mini_corpus)
    )
    assert code == 0, log
    results = json.loads(Path(os.path.join(output, "results.json")).read_text())
    assert set(results["results"]) == {"clean", "snr5", "reverb"}
    assert results["upstream"]["kind"] == upstream_kind
    # 12 speakers, one test utterance each: chance is 1/12
    assert results["results"]["clean"]["accuracy"] >= 0.3, results
    weights = results["layer_weights"]
    assert len(weights) == (6 if upstream_kind == "student" else 13) and abs(sum(weights) - 1) < 1e-5
    table = Path(os.path.join(output, "results.md")).read_text()
    assert "| snr5 |" in table and "| reverb |" in table
    # no upstream weights in the downstream checkpoints: only the weighted sum and the head
    checkpoints = sorted(folder for folder in os.listdir(os.path.join(output, "save")) if folder.startswith("CKPT+"))
    assert checkpoints
    folder = os.path.join(output, "save", checkpoints[-1])
    tensors = {}
    for name in ("weighted_sum", "projector", "classifier"):
        tensors.update(
            {f"{name}.{key}": value for key, value in torch.load(os.path.join(folder, f"{name}.ckpt")).items()}
        )
    assert sorted(tensors) == [
        "classifier.bias",
        "classifier.weight",
        "projector.bias",
        "projector.weight",
        "weighted_sum.weights",
    ]
    model_files = {name for name in os.listdir(folder) if name.endswith(".ckpt")}
    assert model_files == {
        "weighted_sum.ckpt",
        "projector.ckpt",
        "classifier.ckpt",
        "counter.ckpt",
        "brain.ckpt",
        "optimizer.ckpt",
        "dataloader-TRAIN.ckpt",
    }
