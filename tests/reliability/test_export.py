"""Reliability of ``export --overwrite``: it replaces an earlier, unmodified export of ours and nothing else.

Every export writes ``export_manifest.json`` (the files it wrote, with their SHA-256). ``--overwrite``
replaces only the files such a manifest lists, and only while they are unchanged; a file the export
would write that no manifest lists (a teacher's ``config.json``, a training run's ``hyperparams.yaml``,
a README) stops the export before anything is written. The students are built in memory (tiny, random):
these tests need no training run.
"""

import contextlib
import errno
import json
import logging
import os
import subprocess
import sys
import tempfile

import pytest
import torch

import robustdistiller.export.folder as export_folder
import robustdistiller.export.student_folder as student_folder
import robustdistiller.runs.write_errors as write_errors
from tests.conftest import folder_snapshot
from robustdistiller.export.cli import main
from robustdistiller.export.errors import ExportError, ExportFolderInUse
from robustdistiller.export.folder import MANIFEST_FILE, file_sha256, read_manifest
from robustdistiller.export.loading import load_student
from robustdistiller.export.student_folder import export_student
from robustdistiller.models.student import DistillerStudent, build_student_config
from robustdistiller.models.teacher import save_random_teacher

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
    return all(
        torch.equal(a, b)
        for a, b in zip(first.state_dict().values(), second.state_dict().values())
        if isinstance(a, torch.Tensor)
    )


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
        {"format": "robustdistiller-export", "format_version": 1, "files": {"../victim.txt": {"sha256": "0" * 64}}},
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
    written = student_folder._write_export

    def fail_half_way(student, info, staging, include_heads, s3prl, **options):
        written(student, info, staging, include_heads, s3prl, **options)
        raise OSError("disk full")

    monkeypatch.setattr(student_folder, "_write_export", fail_half_way)
    with pytest.raises(OSError, match="disk full"):
        export_student(tiny_student(seed=1), folder, overwrite=True)
    assert folder_snapshot(folder) == before
    assert sorted(os.listdir(folder)) == sorted(os.path.basename(path) for path in before)
    with pytest.raises(OSError, match="disk full"):  # a new folder is not left half-written
        export_student(tiny_student(seed=1), str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------------------------
# Concurrent and interrupted exports: a failing export removes only its own staging folder
# ------------------------------------------------------------------------------------------------


def staging_folders(folder):
    return sorted(name for name in os.listdir(folder) if name.startswith(".export-staging-"))


def write_then(action):
    """A ``_write_export`` that writes this export's files, then (in the first export only) runs ``action()``."""
    written = student_folder._write_export
    calls = []

    def write(student, info, staging, include_heads, s3prl, **options):
        result = written(student, info, staging, include_heads, s3prl, **options)
        calls.append(staging)
        if len(calls) == 1:
            action()
        return result

    return write


@pytest.mark.parametrize("second_overwrites", [False, True])
def test_a_failing_export_never_removes_an_export_completed_meanwhile(tmp_path, monkeypatch, second_overwrites):
    """The issue's case: export A creates the folder; export B (the same command again, with --overwrite or
    into the folder A's staging made "not empty" before) completes there; then A fails. A used to rmtree the
    whole folder it had created. Locks are switched off here (a file system without flock, or an export of
    an older version): only the staging rule protects B's files."""
    monkeypatch.setattr(export_folder, "locked_export_folder", lambda folder: contextlib.nullcontext())
    folder = str(tmp_path / "exported")
    completed = {}

    def second_export_then_fail():
        completed["result"] = export_student(tiny_student(seed=1), folder, overwrite=second_overwrites)
        completed["snapshot"] = folder_snapshot(folder)
        raise OSError("the first export fails after the second one finished")

    monkeypatch.setattr(student_folder, "_write_export", write_then(second_export_then_fail))
    with pytest.raises(OSError, match="the first export fails"):
        export_student(tiny_student(seed=0), folder)
    monkeypatch.undo()
    assert folder_snapshot(folder) == completed["snapshot"]  # B's export, byte for byte
    assert staging_folders(folder) == []
    assert sorted(os.listdir(folder)) == completed["result"]["files"]
    loaded, _ = load_student(folder)
    assert same_weights(loaded, tiny_student(seed=1))


def test_a_users_file_written_during_a_failing_export_survives(tmp_path, monkeypatch):
    """The same rule reached another way: the folder the failing export created got a user's file meanwhile."""
    folder = tmp_path / "exported"

    def user_writes_then_fail():
        (folder / "notes.txt").write_text("mine")
        raise RuntimeError("export failed")

    monkeypatch.setattr(student_folder, "_write_export", write_then(user_writes_then_fail))
    with pytest.raises(RuntimeError, match="export failed"):
        export_student(tiny_student(), str(folder))
    assert sorted(os.listdir(folder)) == ["notes.txt"] and (folder / "notes.txt").read_text() == "mine"


def test_a_second_export_into_a_folder_in_use_is_refused(tmp_path, monkeypatch, capsys):
    """The folder is locked while an export runs (another call in this process: a new open file, so flock
    refuses it as it refuses another process); the running export then completes normally."""
    folder = str(tmp_path / "exported")
    source = save_state_dict(tmp_path)
    source_files = folder_snapshot(os.path.dirname(source))
    refusals = []

    def second_export():
        for overwrite in (False, True):
            with pytest.raises(ExportFolderInUse) as error:
                export_student(tiny_student(seed=1), folder, overwrite=overwrite)
            refusals.append(str(error.value))
        refusals.append(main([str(tmp_path / "nowhere.ckpt"), folder]))  # unreadable source: fails first
        before = folder_snapshot(folder)
        refusals.append(main([source, folder, "--overwrite"]))
        assert folder_snapshot(folder) == before

    monkeypatch.setattr(student_folder, "_write_export", write_then(second_export))
    result = export_student(tiny_student(seed=0), folder)
    monkeypatch.undo()
    assert refusals[0] == refusals[1] and f"Export folder '{folder}' is in use by another export" in refusals[0]
    assert refusals[2:] == [1, 1] and "is in use by another export" in capsys.readouterr().err
    assert sorted(os.listdir(folder)) == result["files"]
    loaded, _ = load_student(folder)
    assert same_weights(loaded, tiny_student(seed=0))
    export_student(source, folder, overwrite=True)  # the lock is released at the end
    assert folder_snapshot(os.path.dirname(source)) == source_files


def save_state_dict(tmp_path):
    path = tmp_path / "source" / "student.ckpt"
    path.parent.mkdir(exist_ok=True)
    torch.save(tiny_student(seed=2).state_dict(), path)
    return str(path)


def test_a_folder_locked_by_another_process_is_refused(tmp_path):
    """A real second process holds the folder's flock (it reports when it holds it; no sleeps)."""
    folder = tmp_path / "exported"
    folder.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys\n"
            "descriptor = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
            "fcntl.flock(descriptor, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
            str(folder),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ExportFolderInUse, match="in use by another export"):
            export_student(tiny_student(), str(folder))
        assert os.listdir(folder) == []
    finally:
        holder.stdin.close()
        holder.wait()
    export_student(tiny_student(), str(folder))  # free again once that process ended


def make_stale_staging(folder, partial=b"PK\x03\x04 half a file"):
    """What a killed export leaves: a staging folder (named as tempfile.mkdtemp names it) with a partial file."""
    staging = tempfile.mkdtemp(prefix=".export-staging-", dir=folder)
    with open(os.path.join(staging, "encoder.ckpt"), "wb") as fout:
        fout.write(partial)
    return os.path.basename(staging)


def test_stale_staging_of_a_killed_export_is_cleaned_up(tmp_path, caplog):
    """Before: the hidden leftover made the folder "not empty" (while `ls` showed nothing) and --overwrite
    left it behind."""
    empty_looking = tmp_path / "new"
    empty_looking.mkdir()
    name = make_stale_staging(str(empty_looking))
    assert [entry for entry in os.listdir(empty_looking) if not entry.startswith(".")] == []
    with caplog.at_level(logging.WARNING, logger="robustdistiller.export"):
        result = export_student(tiny_student(), str(empty_looking))  # no --overwrite needed
    assert sorted(os.listdir(empty_looking)) == result["files"]
    assert f"Removing {empty_looking / name}, the staging folder of an export that was interrupted" in caplog.text

    # --overwrite over an earlier export with a leftover: replaced, leftover removed, a user's files kept
    (empty_looking / "my_notes.txt").write_text("keep")
    (empty_looking / ".export-staging-notes").mkdir()  # not a name mkdtemp gives: the user's, kept
    (empty_looking / ".export-staging-notes" / "a.txt").write_text("keep too")
    make_stale_staging(str(empty_looking))
    user_files = folder_snapshot(str(empty_looking / ".export-staging-notes"))
    second = export_student(tiny_student(seed=1), str(empty_looking), overwrite=True)
    assert staging_folders(str(empty_looking)) == [".export-staging-notes"]
    assert folder_snapshot(str(empty_looking / ".export-staging-notes")) == user_files
    assert (empty_looking / "my_notes.txt").read_text() == "keep"
    assert set(os.listdir(empty_looking)) == set(second["files"]) | {"my_notes.txt", ".export-staging-notes"}
    # the user's look-alike folder still counts: the folder is not empty for an export without --overwrite
    with pytest.raises(ExportError, match="not empty"):
        export_student(tiny_student(), str(empty_looking))


# ------------------------------------------------------------------------------------------------
# Write errors: a full disk names the file, the device and the free space
# ------------------------------------------------------------------------------------------------

TORCH_FULL_DISK = "[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"


def torch_save_failing_for(name, free, monkeypatch):
    """``torch.save`` raising what PyTorch's zip writer raises on a full disk, for files named ``name``;
    the device then has ``free`` bytes left."""
    real_save = torch.save

    def save(obj, path, *args, **kwargs):
        if os.path.basename(os.fspath(path)) == name:
            with open(path, "wb") as fout:
                fout.write(b"PK\x03\x04")  # what a writer manages before the disk is full
            raise RuntimeError(TORCH_FULL_DISK)
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(write_errors, "free_bytes", lambda path: free)


@pytest.mark.parametrize("name", ["encoder.ckpt", "prediction_split.ckpt"])
def test_a_full_disk_during_an_export_names_file_device_and_free_space(tmp_path, monkeypatch, capsys, name):
    folder = str(tmp_path / "exported")
    export_student(tiny_student(), folder)
    before = folder_snapshot(folder)
    torch_save_failing_for(name, 12 * 1024, monkeypatch)
    with pytest.raises(write_errors.WriteFailedError) as error:
        export_student(tiny_student(seed=1), folder, overwrite=True)
    message = str(error.value)
    device = write_errors.device_of(folder)
    assert message.startswith(f"no space left on {device} while writing {folder}/.export-staging-")
    assert message.endswith(f"/{name} (12.0 KiB free)") and error.value.errno == errno.ENOSPC
    assert "inline_container" not in message and TORCH_FULL_DISK in repr(error.value.__cause__)
    assert folder_snapshot(folder) == before and staging_folders(folder) == []
    assert main([folder, str(tmp_path / "copy")]) == 1  # the command line: one line, no traceback
    assert f"error: no space left on {write_errors.device_of(str(tmp_path))} while writing" in capsys.readouterr().err
    assert not (tmp_path / "copy").exists()  # the folder it created, still empty, is gone


def test_a_full_disk_writing_a_text_file_of_the_export(tmp_path, monkeypatch):
    """The same message for Python's own writes (OSError ENOSPC): hyperparams.yaml of a new export."""
    real_open = open

    def open_failing(path, mode="r", *args, **kwargs):
        if "w" in mode and os.path.basename(os.fspath(path)) == "hyperparams.yaml":
            raise OSError(errno.ENOSPC, "No space left on device", os.fspath(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(student_folder, "open", open_failing, raising=False)
    monkeypatch.setattr(write_errors, "free_bytes", lambda path: 0)
    folder = str(tmp_path / "exported")
    with pytest.raises(write_errors.WriteFailedError) as error:
        export_student(tiny_student(), folder)
    assert str(error.value).startswith(f"no space left on {write_errors.device_of(str(tmp_path))} while writing ")
    assert str(error.value).endswith("/hyperparams.yaml (0 B free)")
    assert not os.path.exists(folder)


def test_a_torch_write_failure_with_space_left_is_not_called_a_full_disk(tmp_path, monkeypatch):
    torch_save_failing_for("encoder.ckpt", 5 * 1024**3, monkeypatch)
    with pytest.raises(write_errors.WriteFailedError) as error:
        export_student(tiny_student(), str(tmp_path / "exported"))
    message = str(error.value)
    assert message.startswith(f"cannot write {tmp_path}/exported/.export-staging-")
    assert f"encoder.ckpt on {write_errors.device_of(str(tmp_path))} (5.0 GiB free): {TORCH_FULL_DISK}" in message


@pytest.mark.parametrize("name", ["model.ckpt", "CKPT.yaml"])
def test_a_full_disk_during_a_checkpoint_save_names_the_file(tmp_path, monkeypatch, name):
    """The checkpoint save path uses the same helper: no torch zip error, no published half checkpoint."""
    from robustdistiller.runs.checkpoints import AtomicCheckpointer

    model = torch.nn.Linear(2, 2)
    checkpointer = AtomicCheckpointer(str(tmp_path / "save"), recoverables={"model": model})
    earlier = checkpointer.save_checkpoint(meta={"step": 1})
    before = folder_snapshot(str(earlier.path))
    if name == "model.ckpt":
        torch_save_failing_for(name, 4096, monkeypatch)
    else:
        real_open = open

        def open_failing(path, mode="r", *args, **kwargs):
            if "w" in mode and os.path.basename(os.fspath(path)) == name:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_open(path, mode, *args, **kwargs)

        monkeypatch.setattr("builtins.open", open_failing)
        monkeypatch.setattr(write_errors, "free_bytes", lambda path: 4096)
    with pytest.raises(write_errors.WriteFailedError) as error:
        checkpointer.save_checkpoint(meta={"step": 2})
    monkeypatch.undo()
    message = str(error.value)
    assert message.startswith(
        f"no space left on {write_errors.device_of(str(tmp_path))} while writing {tmp_path / 'save'}/.partial-CKPT+"
    )
    assert message.endswith(f"/{name} (4.0 KiB free)")
    assert [path.name for path in (tmp_path / "save").iterdir() if path.name.startswith("CKPT+")] == [earlier.path.name]
    assert folder_snapshot(str(earlier.path)) == before
    assert checkpointer.recover_if_possible().meta["step"] == 1
