"""Reliability of ``export --overwrite``: it replaces an earlier, unmodified export of ours and nothing else.

Every export writes ``export_manifest.json`` (the files it wrote, with their SHA-256). ``--overwrite``
replaces only the files such a manifest lists, and only while they are unchanged; a file the export
would write that no manifest lists (a teacher's ``config.json``, a training run's ``hyperparams.yaml``,
a README) stops the export before anything is written. The students are built in memory (tiny, random):
these tests need no training run.
"""

import json
import os

import pytest
import torch

import robustdistiller.export as export_module
from conftest import folder_snapshot
from robustdistiller.export import (
    MANIFEST_FILE,
    ExportError,
    export_student,
    file_sha256,
    load_student,
    main,
    read_manifest,
)
from robustdistiller.student import DistillerStudent, build_student_config
from robustdistiller.teacher import save_random_teacher

TINY = dict(
    hidden_size=32,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=[24] * 7,  # narrower than hidden_size: s3prl then has a projection (exportable)
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)


def tiny_student(seed=0):
    torch.manual_seed(seed)
    return DistillerStudent(build_student_config(**TINY), target_layers=(2, 4)).eval()


def same_weights(first, second):
    return all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values())
               if isinstance(a, torch.Tensor))


def refused_and_untouched(folder, *match):
    """Exports with --overwrite into ``folder``: must raise naming ``match``; no file may change."""
    before = folder_snapshot(folder)
    with pytest.raises(ExportError) as error:
        export_student(tiny_student(), folder, overwrite=True)
    message = str(error.value)
    for expected in match:
        assert expected in message, (expected, message)
    assert "choose another" in message
    assert folder_snapshot(folder) == before
    assert sorted(os.listdir(folder)) == sorted({os.path.relpath(p, folder).split(os.sep)[0] for p in before})
    return message


def test_teacher_folder_is_refused_and_left_byte_identical(tmp_path):
    teacher = save_random_teacher(str(tmp_path / "wavlm"), model_type="wavlm")
    with pytest.raises(ExportError, match="not empty"):
        export_student(tiny_student(), teacher)
    message = refused_and_untouched(teacher, "config.json", "model.safetensors", "preprocessor_config.json")
    assert f"no {MANIFEST_FILE}" in message
    assert "RANDOM_WEIGHTS.txt" not in message  # not a collision: only the files it would overwrite are listed


def test_training_run_folder_is_refused(tmp_path):
    """Exporting a run into its own output folder would overwrite its hyperparams.yaml."""
    run = tmp_path / "run"
    checkpoint = run / "save" / "CKPT+2024-01-01+00-00-00+00"
    checkpoint.mkdir(parents=True)
    torch.save(tiny_student().state_dict(), checkpoint / "student.ckpt")
    (checkpoint / "CKPT.yaml").write_text("optimizer_step: 4\nvalid_loss: 1.5\n")
    (run / "hyperparams.yaml").write_text("# the run's resolved hyperparameters\nnumber_of_steps: 4\n")
    (run / "train_log.txt").write_text("epoch: 1, train loss: 2.0\n")
    (run / "distillation_info.json").write_text(json.dumps({"teacher_source": "wavlm"}))
    refused_and_untouched(str(run), "hyperparams.yaml")
    before = folder_snapshot(str(run))
    with pytest.raises(ExportError, match="hyperparams.yaml"):
        export_student(str(run / "save"), str(run), overwrite=True)
    assert main([str(run / "save"), str(run), "--overwrite"]) == 1
    assert folder_snapshot(str(run)) == before


def test_folder_with_a_readme_is_refused(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "README.md").write_text("# My project\n\nNotes I care about.\n")
    message = refused_and_untouched(str(folder), "README.md")
    assert "config.json" not in message  # files that do not exist yet are no collision


def test_reexport_over_an_earlier_export_replaces_it(tmp_path):
    folder = str(tmp_path / "exported")
    first = export_student(tiny_student(seed=0), folder, s3prl=True)
    assert MANIFEST_FILE in first["files"] and "s3prl_distiller.ckpt" in first["files"]
    manifest = read_manifest(folder)
    assert manifest["format_version"] == 1 and manifest["source"] == "in-memory student"
    assert set(manifest["files"]) == set(first["files"]) - {MANIFEST_FILE}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == file_sha256(os.path.join(folder, name))
        assert entry["bytes"] == os.path.getsize(os.path.join(folder, name))
    with pytest.raises(ExportError, match="not empty"):  # still refused without --overwrite
        export_student(tiny_student(seed=1), folder)

    second = export_student(tiny_student(seed=1), folder, overwrite=True)  # without s3prl this time
    loaded, _ = load_student(folder)
    assert same_weights(loaded, tiny_student(seed=1)) and not same_weights(loaded, tiny_student(seed=0))
    assert "s3prl_distiller.ckpt" not in second["files"]
    assert not os.path.exists(os.path.join(folder, "s3prl_distiller.ckpt"))  # listed by the old manifest
    assert sorted(os.listdir(folder)) == second["files"]  # no staging folder left behind
    assert set(read_manifest(folder)["files"]) == set(second["files"]) - {MANIFEST_FILE}
    assert main([folder, str(tmp_path / "again")]) == 0  # an export is a source; the CLI works too
    assert main([folder, str(tmp_path / "again"), "--overwrite", "--no-heads"]) == 0


def test_an_edited_earlier_export_is_refused(tmp_path):
    folder = str(tmp_path / "exported")
    export_student(tiny_student(), folder)
    weights = os.path.join(folder, "model.safetensors")
    with open(weights, "r+b") as fout:  # the user fine-tuned or patched the weights in place
        fout.seek(-4, os.SEEK_END)
        fout.write(b"\x00\x00\x80\x3f")
    before = folder_snapshot(folder)
    with pytest.raises(ExportError, match="changed since") as error:
        export_student(tiny_student(seed=1), folder, overwrite=True)
    assert "model.safetensors" in str(error.value) and "move those files away" in str(error.value)
    assert folder_snapshot(folder) == before


def test_a_users_extra_file_survives_the_overwrite(tmp_path):
    folder = tmp_path / "exported"
    export_student(tiny_student(), str(folder))
    (folder / "my_results.csv").write_text("task,accuracy\nks,0.97\n")
    (folder / "notes").mkdir()
    (folder / "notes" / "todo.txt").write_text("publish\n")
    export_student(tiny_student(seed=1), str(folder), overwrite=True)
    assert (folder / "my_results.csv").read_text() == "task,accuracy\nks,0.97\n"
    assert (folder / "notes" / "todo.txt").read_text() == "publish\n"
    assert "my_results.csv" not in read_manifest(str(folder))["files"]


def test_a_folder_without_collisions_accepts_overwrite(tmp_path):
    """Documented: --overwrite into a non-export folder is fine when no file would be overwritten."""
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "data.txt").write_text("keep")
    with pytest.raises(ExportError, match="not empty"):
        export_student(tiny_student(), str(folder))
    export_student(tiny_student(), str(folder), overwrite=True)
    assert (folder / "data.txt").read_text() == "keep"
    assert "data.txt" not in read_manifest(str(folder))["files"]


@pytest.mark.parametrize(
    "manifest",
    [
        "not json",
        {"format": "someone-else", "format_version": 1, "files": {}},
        {"format": "robustdistiller-export", "format_version": 99, "files": {}},
        # a manifest must never make the export delete outside its folder
        {"format": "robustdistiller-export", "format_version": 1,
         "files": {"../victim.txt": {"sha256": "0" * 64}}},
    ],
)
def test_a_foreign_or_malformed_manifest_is_no_earlier_export(tmp_path, manifest):
    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / "victim.txt").write_text("outside")
    (folder / "config.json").write_text("{}")
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    (folder / MANIFEST_FILE).write_text(text)
    refused_and_untouched(str(folder), "config.json", MANIFEST_FILE)
    assert (tmp_path / "victim.txt").read_text() == "outside"


def test_a_failed_export_leaves_the_earlier_one_intact(tmp_path, monkeypatch):
    folder = str(tmp_path / "exported")
    export_student(tiny_student(), folder)
    before = folder_snapshot(folder)
    written = export_module._write_export

    def fail_half_way(student, info, staging, include_heads, s3prl):
        written(student, info, staging, include_heads, s3prl)
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "_write_export", fail_half_way)
    with pytest.raises(OSError, match="disk full"):
        export_student(tiny_student(seed=1), folder, overwrite=True)
    assert folder_snapshot(folder) == before
    assert sorted(os.listdir(folder)) == sorted(os.path.basename(path) for path in before)
    with pytest.raises(OSError, match="disk full"):  # a new folder is not left half-written
        export_student(tiny_student(seed=1), str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()
