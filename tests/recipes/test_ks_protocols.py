"""KS end to end under every test-protocol preset (``--test_protocol``): prepare -> train -> test on the
fixtures, with the peers' sources in their real layouts (miniatures) and a tiny distilled student."""

import csv
from pathlib import Path
import hashlib
import json
import os
import sys

import pytest
import soundfile

from tests.conftest import REPOSITORY_ROOT, corruption_overrides, run_recipe_script

from robustdistiller.downstream import render_protocol

from robustdistiller.testing.fixtures.peer_sources import generate_peer_sources
from robustdistiller.testing.fixtures.speech_commands import generate_speech_commands

sys.path.insert(0, os.path.join(REPOSITORY_ROOT, "recipes", "SpeechCommands", "KS"))
import prepare_speech_commands as ks_prepare  # noqa: E402

# A few conditions per preset keep the test short; each preset's conditions are checked in
# tests/unit/downstream/test_protocols.py.
CONDITIONS = {
    "robustdistiller": ["clean", "snr5"],
    "huang2022": ["clean", "2dis", "dns", "fsd50k"],
    "srb": ["gnoise_snr0", "env_noise_wham_snr10", "env_noise_esc50_snr20", "rir_bin1"],
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol_sources")
    return generate_speech_commands(str(root), seed=0), generate_peer_sources(str(root))


@pytest.mark.parametrize("protocol", list(CONDITIONS))
def test_ks_runs_under_every_preset(protocol, sources, mini_corpus, trained_run, tmp_path):
    speech_commands, peer = sources
    output = str(tmp_path / "ks")
    overrides = {
        "data_folder": speech_commands["data_folder"],
        "test_folder": speech_commands["test_folder"],
        "upstream_source": trained_run,
        "output_folder": output,
        "number_of_epochs": 1,
        "train_dataloader_opts": {"batch_size": 8, "drop_last": True, "num_workers": 0},
        "valid_dataloader_opts": {"batch_size": 8, "num_workers": 0},
        "test_protocol": protocol,
        "test_condition_names": CONDITIONS[protocol],
        **corruption_overrides(mini_corpus),
    }
    if protocol != "robustdistiller":
        overrides.update(
            test_wham_folder=peer["wham"],
            test_fsd50k_folder=peer["fsd50k"],
            test_dns_folder=peer["dns"],
            test_esc50_folder=peer["esc50"],
            test_ms_snsd_folder=peer["ms_snsd"],
            test_rir_folder=peer["rirs_noises"],
        )
    code, log = run_recipe_script("SpeechCommands/KS", "hparams/superb_ks.yaml", overrides)
    assert code == 0, log
    with open(os.path.join(output, "results.json"), encoding="utf-8") as fin:
        results = json.load(fin)
    assert list(results["results"]) == CONDITIONS[protocol]
    for stats in results["results"].values():
        assert 0.0 <= stats["accuracy"] <= 1.0


def read_files(folder):
    contents = {}
    for directory, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as fin:
                contents[os.path.relpath(path, folder)] = fin.read()
    return contents


@pytest.mark.parametrize("protocol", ["robustdistiller", "huang2022"])
def test_rendering_twice_gives_identical_files_and_checksums(protocol, sources, mini_corpus, tmp_path):
    speech_commands, peer = sources
    save_folder = str(tmp_path / "save")
    os.makedirs(save_folder)
    ks_prepare.prepare_speech_commands(speech_commands["data_folder"], speech_commands["test_folder"], save_folder)
    options = {
        "save_folder": save_folder,
        **corruption_overrides(mini_corpus),
        "test_wham_folder": peer["wham"],
        "test_fsd50k_folder": peer["fsd50k"],
        "test_dns_folder": peer["dns"],
        "test_condition_names": ["snr5", "noise_reverb"] if protocol == "robustdistiller" else ["2dis", "dns"],
    }
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    assert (
        render_protocol.main(
            ["KS", protocol, first] + [f"--{key}={json.dumps(value)}" for key, value in options.items()]
        )
        == 0
    )
    render_protocol.render("KS", protocol, second, options)
    files = read_files(first)
    assert files == read_files(second)
    with open(os.path.join(first, "manifest.csv"), encoding="utf-8") as fin:
        manifest = list(csv.DictReader(fin))
    test_rows = read_csv(os.path.join(save_folder, "test.csv"))
    assert len(manifest) == 2 * len(test_rows) == len(files) - 2
    sums = dict(reversed(line.split("  ")) for line in files["SHA256SUMS"].decode().splitlines())
    assert sums.keys() == set(files) - {"SHA256SUMS"}
    assert all(sums[name] == hashlib.sha256(files[name]).hexdigest() for name in sums)
    noisy = [row for row in manifest if row["noise_file"]]  # Gaussian noise has no file
    assert noisy and all(os.path.isfile(row["noise_file"]) and row["seed"] for row in noisy)
    assert any(row["rir_file"] for row in manifest)
    audio, rate = soundfile.read(os.path.join(first, manifest[0]["wav"]), dtype="float32")
    assert rate == 16000 and audio.ndim == 1
    with pytest.raises(FileExistsError):  # nothing is overwritten
        render_protocol.render("KS", protocol, first, options)


def read_csv(path):
    with open(path, encoding="utf-8") as fin:
        return list(csv.DictReader(fin))


def test_scoring_the_rendered_files_gives_the_numbers_of_scoring_on_the_fly(
    sources, mini_corpus, trained_run, tmp_path
):
    speech_commands, peer = sources
    base = {
        "data_folder": speech_commands["data_folder"],
        "test_folder": speech_commands["test_folder"],
        "upstream_source": trained_run,
        "number_of_epochs": 1,
        "train_dataloader_opts": {"batch_size": 8, "drop_last": True, "num_workers": 0},
        "valid_dataloader_opts": {"batch_size": 8, "num_workers": 0},
        "test_protocol": "huang2022",
        "test_condition_names": ["2dis", "fsd50k"],
        **corruption_overrides(mini_corpus),
        "test_wham_folder": peer["wham"],
        "test_fsd50k_folder": peer["fsd50k"],
    }
    on_the_fly = str(tmp_path / "on_the_fly")
    code, log = run_recipe_script("SpeechCommands/KS", "hparams/superb_ks.yaml", {**base, "output_folder": on_the_fly})
    assert code == 0, log
    rendered = str(tmp_path / "rendered")
    sources_options = {
        key: base[key] for key in ("test_musan_folder", "test_rir_folder", "test_wham_folder", "test_fsd50k_folder")
    }
    manifest = render_protocol.render(
        "KS",
        "huang2022",
        rendered,
        {
            "save_folder": os.path.join(on_the_fly, "save"),
            **sources_options,
            "test_condition_names": ["2dis", "fsd50k"],
        },
    )
    from_files = str(tmp_path / "from_files")
    overrides = {**base, "output_folder": from_files, "test_audio_manifest": manifest}
    for key in sources_options:  # the rendered files need none of the sources
        overrides[key] = None
    code, log = run_recipe_script("SpeechCommands/KS", "hparams/superb_ks.yaml", overrides)
    assert code == 0, log
    results = [
        json.loads(Path(folder, "results.json").read_text(encoding="utf-8"))["results"]
        for folder in (on_the_fly, from_files)
    ]
    assert list(results[0]) == list(results[1]) == ["2dis", "fsd50k"]
    for name in results[0]:  # the same loss to the last bit: the same audio (the checkpoint names differ)
        assert {key: value for key, value in results[0][name].items() if key != "checkpoint"} == {
            key: value for key, value in results[1][name].items() if key != "checkpoint"
        }
    assert results[0]["2dis"]["loss"] != results[0]["fsd50k"]["loss"]  # the conditions differ
