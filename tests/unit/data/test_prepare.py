"""Tests of the data preparation functions on the mini corpus (real on-disk layouts)."""

import csv
import json
import logging
import os
import re
import shutil

import numpy as np
import pytest
import soundfile
from speechbrain.dataio.dataio import load_data_csv

from robustdistiller.testing.mini_corpus import generate_mini_corpus
from robustdistiller.data.prepare.librispeech import prepare_librispeech
from robustdistiller.data.prepare.lists import make_id
from robustdistiller.data.prepare.noise import prepare_noise
from robustdistiller.data.prepare.pools import composition_path, read_composition
from robustdistiller.data.prepare.rirs import prepare_rirs

TRAIN, VALID = ["train-clean-100"], ["dev-clean"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return generate_mini_corpus(
        str(folder),
        seed=0,
        train_speakers=2,
        valid_speakers=1,
        utterances_per_speaker=3,
        valid_utterances_per_speaker=2,
        num_noises=3,
        num_music=1,
        num_speech=0,
        rooms_per_size=1,
        rirs_per_room=2,
        noise_duration=1.0,
        show_progress=False,
    )


def _read_rows(path):
    with open(path, newline="") as csv_file:
        return list(csv.DictReader(csv_file))


def _snapshot(folder):
    """``{relative path: (size, mtime)}`` of every file and folder under ``folder``."""
    snapshot = {}
    for directory, subdirectories, file_names in os.walk(folder):
        for name in subdirectories + file_names:
            path = os.path.join(directory, name)
            status = os.stat(path)
            snapshot[os.path.relpath(path, folder)] = (status.st_size, status.st_mtime_ns)
    return snapshot


def _flac_files(folder):
    return sorted(
        os.path.join(directory, name)
        for directory, _, names in os.walk(folder)
        for name in names
        if name.endswith(".flac")
    )


def _copy_librispeech(corpus, tmp_path):
    copy = tmp_path / "LibriSpeech"
    shutil.copytree(corpus["librispeech"], copy)
    return copy


def _add_utterance(chapter_folder, utterance_number, content):
    """Adds a file and its transcript line to a chapter; ``content``: waveform or raw bytes."""
    speaker, chapter = chapter_folder.parent.name, chapter_folder.name
    utterance_id = f"{speaker}-{chapter}-{utterance_number:04d}"
    path = chapter_folder / f"{utterance_id}.flac"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        soundfile.write(path, content, 16000)
    with open(chapter_folder / f"{speaker}-{chapter}.trans.txt", "a") as transcript:
        transcript.write(f"{utterance_id} EXTRA WORDS\n")
    return path


def _first_chapter(librispeech, subset="train-clean-100"):
    speaker = sorted((librispeech / subset).iterdir())[0]
    return sorted(speaker.iterdir())[0]


# --- LibriSpeech -------------------------------------------------------------------------------


def test_librispeech_rows_match_disk(corpus, tmp_path):
    paths = prepare_librispeech(corpus["librispeech"], str(tmp_path), TRAIN, VALID)
    for key, subset in (("train", TRAIN[0]), ("valid", VALID[0])):
        rows = _read_rows(paths[key])
        flacs = _flac_files(os.path.join(corpus["librispeech"], subset))
        assert list(rows[0]) == ["ID", "duration", "wav", "spk_id", "wrd"]
        assert sorted(row["wav"] for row in rows) == flacs
        for row in rows:
            info = soundfile.info(row["wav"])
            assert float(row["duration"]) == info.frames / info.samplerate
            assert row["ID"] == os.path.basename(row["wav"])[:-5]
            assert row["spk_id"] == row["ID"].split("-")[0]
            chapter_folder = os.path.dirname(row["wav"])
            transcript_name = row["ID"].rsplit("-", 1)[0] + ".trans.txt"
            with open(os.path.join(chapter_folder, transcript_name)) as transcript:
                assert f"{row['ID']} {row['wrd']}\n" in transcript.readlines()
    loaded = load_data_csv(paths["train"])  # SpeechBrain reads it
    assert len(loaded) == 6


def test_short_utterances_are_filtered_and_counted(corpus, tmp_path, caplog):
    librispeech = _copy_librispeech(corpus, tmp_path)
    chapter = _first_chapter(librispeech)
    _add_utterance(chapter, 90, np.full(399, 0.1))
    _add_utterance(chapter, 91, np.full(400, 0.1))
    with caplog.at_level(logging.INFO, logger="robustdistiller.data.prepare"):
        paths = prepare_librispeech(str(librispeech), str(tmp_path / "save"), TRAIN, [])
    ids = {row["ID"] for row in _read_rows(paths["train"])}
    assert len(ids) == 7 and not any(i.endswith("-0090") for i in ids) and any(i.endswith("-0091") for i in ids)
    assert "1 shorter than 400 samples" in caplog.text
    assert paths["valid"] is None


def test_corrupt_flac_is_skipped_and_named(corpus, tmp_path, caplog):
    librispeech = _copy_librispeech(corpus, tmp_path)
    corrupt = _add_utterance(_first_chapter(librispeech), 95, b"this is not a flac file" * 10)
    with caplog.at_level(logging.WARNING, logger="robustdistiller.data.prepare"):
        paths = prepare_librispeech(str(librispeech), str(tmp_path / "save"), TRAIN, VALID)
    assert len(_read_rows(paths["train"])) == 6
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any(str(corrupt) in message for message in warnings)


def test_librispeech_missing_or_empty_folders_raise_clear_errors(corpus, tmp_path):
    missing = tmp_path / "nowhere" / "LibriSpeech"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        prepare_librispeech(str(missing), str(tmp_path / "save"), TRAIN, VALID)
    with pytest.raises(FileNotFoundError, match=r"train-clean-360.*expected LibriSpeech/<subset>"):
        prepare_librispeech(corpus["librispeech"], str(tmp_path / "save"), ["train-clean-360"], VALID)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        prepare_librispeech(str(tmp_path / "empty"), str(tmp_path / "save"), TRAIN, VALID)
    parent = os.path.dirname(corpus["librispeech"])  # the folder *holding* LibriSpeech
    with pytest.raises(FileNotFoundError, match="LibriSpeech"):
        prepare_librispeech(parent, str(tmp_path / "save"), TRAIN, VALID)
    with pytest.raises(ValueError, match="both"):
        prepare_librispeech(corpus["librispeech"], str(tmp_path / "save"), TRAIN, TRAIN)


def test_prepared_data_is_not_rewritten_but_changed_options_prepare_again(corpus, tmp_path):
    save = str(tmp_path)
    paths = prepare_librispeech(corpus["librispeech"], save, TRAIN, VALID)
    old_time = 1_000_000_000
    for path in paths.values():
        os.utime(path, (old_time, old_time))
    assert prepare_librispeech(corpus["librispeech"], save, TRAIN, VALID) == paths
    assert all(os.stat(path).st_mtime == old_time for path in paths.values())
    frames = [soundfile.info(path).frames for path in _flac_files(corpus["librispeech"])]
    threshold = sorted(frames)[1]  # leaves out exactly the shortest utterance
    prepare_librispeech(corpus["librispeech"], save, TRAIN, VALID, min_samples=threshold)
    assert all(os.stat(path).st_mtime != old_time for path in paths.values())
    kept = len(_read_rows(paths["train"])) + len(_read_rows(paths["valid"]))
    assert kept == sum(count >= threshold for count in frames) == len(frames) - 1
    with pytest.raises(ValueError, match="No usable utterance"):
        prepare_librispeech(corpus["librispeech"], save, TRAIN, VALID, min_samples=frames[-1] + 1)
    skipped = prepare_librispeech("/does/not/exist", save, TRAIN, VALID, skip_prep=True)
    assert skipped == paths


def test_user_folders_are_unchanged_by_preparation(corpus, tmp_path):
    root = os.path.dirname(corpus["librispeech"])
    before = _snapshot(root)
    prepare_librispeech(corpus["librispeech"], str(tmp_path), TRAIN, VALID)
    prepare_noise(str(tmp_path), musan_folder=corpus["musan"], musan_subsets=("noise", "music"))
    prepare_noise(
        str(tmp_path), musan_folder=corpus["musan"], urbansound_folder=corpus["urbansound"], csv_name="authors.csv"
    )
    os.remove(tmp_path / "authors_composition.json")  # recomputed from the CSV, in the save folder
    prepare_noise(
        str(tmp_path), musan_folder=corpus["musan"], urbansound_folder=corpus["urbansound"], csv_name="authors.csv"
    )
    prepare_rirs(str(tmp_path), corpus["rirs"], rirs_noises_subsets=("real", "simulated"))
    prepare_rirs(str(tmp_path), corpus["rirs"], rir_format="folder", csv_name="folder.csv")
    assert _snapshot(root) == before


# --- Noise -------------------------------------------------------------------------------------


def test_musan_noise_skips_metadata_with_warning_and_keeps_stereo(corpus, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="robustdistiller.data.prepare"):
        path = prepare_noise(str(tmp_path), musan_folder=corpus["musan"])
    rows = _read_rows(path)
    assert list(rows[0]) == ["ID", "duration", "wav", "wav_format", "wav_opts"]
    names = sorted(os.path.basename(row["wav"]) for row in rows)
    on_disk = sorted(
        name
        for directory, _, files in os.walk(os.path.join(corpus["musan"], "noise"))
        for name in files
        if name.endswith(".wav")
    )
    assert names == on_disk and len(names) == 4  # 3 mono + the stereo 44.1 kHz file
    stereo = [row for row in rows if soundfile.info(row["wav"]).channels == 2]
    assert len(stereo) == 1 and float(stereo[0]["duration"]) == pytest.approx(1.0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "4 files left out of" in warnings[0] and "not an audio file" in warnings[0]
    with open(os.path.join(tmp_path, "noise_skipped.json")) as json_file:  # one line, every name recorded
        examples = json.load(json_file)["by_reason"]
    names = {os.path.basename(p) for entry in examples.values() for p in entry["examples"]}
    assert names == {"ANNOTATIONS", "LICENSE"}
    assert "44100 Hz" in caplog.text  # unusual files are logged
    assert all(row["wav_format"] == "wav" and row["wav_opts"] == "" for row in rows)
    assert len(load_data_csv(path)) == 4


def test_noise_folder_with_dotted_names_junk_and_corrupt_audio(tmp_path, caplog):
    folder = tmp_path / "my_noises"
    (folder / "sub.dir").mkdir(parents=True)
    for name in ("a.b.wav", "a_b.wav", "a.b.c.wav", "sub.dir/a.wav", "sub_dir/a.wav"):
        (folder / name).parent.mkdir(exist_ok=True)
        soundfile.write(folder / name, np.zeros(1600), 16000)
    (folder / "README.txt").write_text("not audio")
    (folder / "broken.wav").write_bytes(b"RIFF....garbage")
    with caplog.at_level(logging.WARNING, logger="robustdistiller.data.prepare"):
        path = prepare_noise(str(tmp_path / "save"), extra_folders=[str(folder)])
    rows = _read_rows(path)
    ids = [row["ID"] for row in rows]
    assert len(rows) == 5 and len(set(ids)) == 5
    assert all("." not in i and "/" not in i for i in ids)
    assert "README.txt" in caplog.text and "broken.wav" in caplog.text
    assert len(load_data_csv(path)) == 5
    assert make_id("x/y.z.wav", "p") == "p_x_y_z"


def _make_urbansound(root):
    for fold, name in [
        ("fold1", "100-2-0-0.wav"),
        ("fold1", "101-3-0-1.wav"),
        ("fold2", "102-9-1-0.wav"),
        ("fold2", "103-8-0-0.wav"),
    ]:
        (root / "audio" / fold).mkdir(parents=True, exist_ok=True)
        soundfile.write(root / "audio" / fold / name, np.zeros(1600), 16000)  # 0.1 s: the shortest noise kept
    (root / "audio" / "fold1" / ".DS_Store").write_bytes(b"\0")


def test_urbansound_excludes_classes(tmp_path):
    urbansound = tmp_path / "UrbanSound8K"
    _make_urbansound(urbansound)
    path = prepare_noise(str(tmp_path / "save"), urbansound_folder=str(urbansound))
    names = sorted(os.path.basename(row["wav"]) for row in _read_rows(path))
    assert names == ["101-3-0-1.wav", "103-8-0-0.wav"]  # children_playing, street_music left out
    path = prepare_noise(str(tmp_path / "save"), urbansound_folder=str(urbansound), urbansound_exclude=["siren"])
    assert len(_read_rows(path)) == 3
    with pytest.raises(ValueError, match="Unknown UrbanSound8K"):
        prepare_noise(
            str(tmp_path / "save"),
            urbansound_folder=str(urbansound),
            urbansound_exclude=["sirens"],
            csv_name="other.csv",
        )


def test_noise_errors_name_the_folder(tmp_path):
    with pytest.raises(ValueError, match="needs"):
        prepare_noise(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="missing_musan"):
        prepare_noise(str(tmp_path), musan_folder=str(tmp_path / "missing_musan"))
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "LICENSE").write_text("text")
    with pytest.raises(ValueError, match="junk"):
        prepare_noise(str(tmp_path), extra_folders=[str(junk)])
    (tmp_path / "musan").mkdir()
    (tmp_path / "musan" / "music").mkdir()
    with pytest.raises(FileNotFoundError, match=r"musan/noise"):
        prepare_noise(str(tmp_path), musan_folder=str(tmp_path / "musan"))


# --- RIRs --------------------------------------------------------------------------------------


def _list_entries(list_path):
    with open(list_path) as list_file:
        return [(line.split()[1], line.split()[-1]) for line in list_file if line.strip()]


def test_real_rirs_exclude_isotropic_noises(corpus, tmp_path):
    rirs = corpus["rirs"]
    real = os.path.join(rirs, "real_rirs_isotropic_noises")
    path = prepare_rirs(str(tmp_path), rirs)
    rows = _read_rows(path)
    expected = _list_entries(os.path.join(real, "rir_list"))
    assert sorted(row["ID"] for row in rows) == sorted(rir_id for rir_id, _ in expected)
    noise_names = {os.path.basename(p) for _, p in _list_entries(os.path.join(real, "noise_list"))}
    assert noise_names and not noise_names & {os.path.basename(row["wav"]) for row in rows}
    assert all(os.path.isfile(row["wav"]) for row in rows)


def test_simulated_rirs_are_exactly_the_rir_lists(corpus, tmp_path, caplog):
    rirs = corpus["rirs"]
    with caplog.at_level(logging.INFO, logger="robustdistiller.data.prepare"):
        path = prepare_rirs(str(tmp_path), rirs, rirs_noises_subsets=["simulated"])
    expected = []
    for size in ("smallroom", "mediumroom", "largeroom"):
        expected += _list_entries(os.path.join(rirs, "simulated_rirs", size, "rir_list"))
    base = os.path.dirname(rirs)
    rows = _read_rows(path)
    assert sorted((row["ID"], row["wav"]) for row in rows) == sorted(
        (rir_id, os.path.join(base, relative)) for rir_id, relative in expected
    )
    for row in rows:
        assert float(row["duration"]) == soundfile.info(row["wav"]).duration
    assert len(load_data_csv(path)) == 6


def test_rir_list_resolves_against_a_renamed_folder(corpus, tmp_path):
    renamed = tmp_path / "my_rirs"
    shutil.copytree(corpus["rirs"], renamed)
    rows = _read_rows(prepare_rirs(str(tmp_path / "save"), str(renamed), rirs_noises_subsets=["real", "simulated"]))
    assert len(rows) == 9 and all(row["wav"].startswith(str(renamed)) for row in rows)


def test_folder_and_dns_formats_leave_out_noises(corpus, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="robustdistiller.data.prepare"):
        path = prepare_rirs(str(tmp_path), corpus["rirs"], rir_format="folder")
    names = {os.path.basename(row["wav"]) for row in _read_rows(path)}
    assert len(names) == 9 and not any("noise" in name for name in names)
    assert "4 ch" in caplog.text and "48000 Hz" in caplog.text
    dns = tmp_path / "impulse_responses" / "SLR26" / "simulated_rirs_48k" / "smallroom"
    dns.mkdir(parents=True)
    soundfile.write(dns / "Room001-00001.wav", np.r_[1.0, np.zeros(4799)], 48000)
    path = prepare_rirs(str(tmp_path), str(tmp_path / "impulse_responses"), rir_format="dns", csv_name="dns.csv")
    assert [row["ID"] for row in _read_rows(path)] == ["SLR26_simulated_rirs_48k_smallroom_Room001-00001"]


def test_rir_errors(corpus, tmp_path):
    with pytest.raises(ValueError, match="rir_format"):
        prepare_rirs(str(tmp_path), corpus["rirs"], rir_format="kaldi")
    with pytest.raises(ValueError, match="rirs_noises_subsets"):
        prepare_rirs(str(tmp_path), corpus["rirs"], rirs_noises_subsets=["pointsource"])
    with pytest.raises(FileNotFoundError, match="no_rirs_here"):
        prepare_rirs(str(tmp_path), str(tmp_path / "no_rirs_here"))
    (tmp_path / "RIRS_NOISES" / "simulated_rirs").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="rir_list"):
        prepare_rirs(str(tmp_path), str(tmp_path / "RIRS_NOISES"))


def test_rirs_skip_if_prepared_and_reprepare_on_change(corpus, tmp_path):
    path = prepare_rirs(str(tmp_path), corpus["rirs"])
    os.utime(path, (1_000_000_000, 1_000_000_000))
    prepare_rirs(str(tmp_path), corpus["rirs"])
    assert os.stat(path).st_mtime == 1_000_000_000
    prepare_rirs(str(tmp_path), corpus["rirs"], rirs_noises_subsets=["real", "simulated"])
    assert os.stat(path).st_mtime != 1_000_000_000 and len(_read_rows(path)) == 9


# --- Pool composition ----------------------------------------------------------------------------


def _durations(paths):
    return [soundfile.info(path).frames / soundfile.info(path).samplerate for path in paths]


def _wavs(folder):
    return sorted(
        os.path.join(directory, name)
        for directory, _, names in os.walk(folder)
        for name in names
        if name.endswith(".wav")
    )


def _urbansound_metadata(urbansound):
    with open(os.path.join(urbansound, "metadata", "UrbanSound8K.csv"), newline="") as csv_file:
        return list(csv.DictReader(csv_file))


def test_mini_urbansound_excluded_classes_are_excluded_and_counted(corpus, tmp_path, caplog):
    metadata = _urbansound_metadata(corpus["urbansound"])
    excluded = {name: sum(row["class"] == name for row in metadata) for name in ("children_playing", "street_music")}
    assert all(count >= 1 for count in excluded.values())
    with caplog.at_level(logging.INFO, logger="robustdistiller.data.prepare"):
        path = prepare_noise(str(tmp_path), urbansound_folder=corpus["urbansound"])
    rows = _read_rows(path)
    kept = sorted(row["slice_file_name"] for row in metadata if row["class"] not in excluded)
    assert sorted(os.path.basename(row["wav"]) for row in rows) == kept
    assert all(row["ID"].startswith("urbansound_fold") for row in rows)
    composition = read_composition(path)
    source = composition["sources"]["urbansound8k"]
    assert source["excluded"] == excluded and source["files"] == len(kept) == composition["files"]
    assert source["draw_share"] == 1.0
    assert source["parts"] == {
        row["class"]: {
            "files": 1,
            "hours": pytest.approx(
                _durations([os.path.join(corpus["urbansound"], "audio", f"fold{row['fold']}", row["slice_file_name"])])[
                    0
                ]
                / 3600,
                abs=1e-6,
            ),
        }
        for row in metadata
        if row["class"] not in excluded
    }
    assert "2 excluded (children_playing 1, street_music 1)" in caplog.text
    assert "excluded classes: children_playing 1, street_music 1" in caplog.text
    assert "44100 Hz" in caplog.text and "2 ch" in caplog.text  # stereo 44.1 kHz clips are logged
    assert len(load_data_csv(path)) == len(kept)


def test_noise_composition_of_the_authors_pool(corpus, tmp_path, caplog):
    extra = tmp_path / "extra_noises"
    (extra / "sub").mkdir(parents=True)
    soundfile.write(extra / "sub" / "e.wav", np.zeros(8000) + 0.1, 16000)
    save = tmp_path / "save"
    with caplog.at_level(logging.INFO, logger="robustdistiller.data.prepare"):
        path = prepare_noise(
            str(save), musan_folder=corpus["musan"], urbansound_folder=corpus["urbansound"], extra_folders=[str(extra)]
        )
    assert path == str(save / "noise.csv")
    composition_file = save / "noise_composition.json"
    assert composition_path(path) == str(composition_file) and composition_file.is_file()
    with open(composition_file) as json_file:
        composition = json.load(json_file)
    musan_noise = _wavs(os.path.join(corpus["musan"], "noise"))
    urbansound = [p for p in _wavs(corpus["urbansound"]) if not re.search(r"-(2|9)-\d+-\d+\.wav$", p)]
    expected = {"musan/noise": musan_noise, "urbansound8k": urbansound, "extra0": [str(extra / "sub" / "e.wav")]}
    total = sum(len(paths) for paths in expected.values())
    assert (len(musan_noise), len(urbansound), total) == (4, 8, 13)
    assert composition["files"] == total == len(_read_rows(path))
    assert sorted(composition["sources"]) == sorted(expected)
    total_seconds = sum(sum(_durations(paths)) for paths in expected.values())
    assert composition["hours"] == pytest.approx(total_seconds / 3600, abs=1e-6)
    for name, paths in expected.items():
        source = composition["sources"][name]
        assert source["files"] == len(paths)
        assert source["draw_share"] == pytest.approx(len(paths) / total, abs=1e-6)
        assert source["seconds"] == pytest.approx(sum(_durations(paths)), abs=1e-3)
        assert source["hours"] == pytest.approx(sum(_durations(paths)) / 3600, abs=1e-6)
        assert source["hours_share"] == pytest.approx(sum(_durations(paths)) / total_seconds, abs=1e-6)
    assert sum(source["draw_share"] for source in composition["sources"].values()) == pytest.approx(1.0)
    assert composition["sources"]["musan/noise"]["folder"] == os.path.join(corpus["musan"], "noise")
    assert composition["sources"]["musan/noise"]["parts"] == {
        leaf: {
            "files": len(_wavs(os.path.join(corpus["musan"], "noise", leaf))),
            "hours": pytest.approx(
                sum(_durations(_wavs(os.path.join(corpus["musan"], "noise", leaf)))) / 3600, abs=1e-6
            ),
        }
        for leaf in ("free-sound", "sound-bible")
    }
    assert composition["sources"]["extra0"]["folder"] == str(extra)
    assert composition["sources"]["extra0"]["parts"] == {
        "sub": {"files": 1, "hours": pytest.approx(0.5 / 3600, abs=1e-6)}
    }
    assert composition["sources"]["urbansound8k"]["excluded"] == {"children_playing": 1, "street_music": 1}
    assert composition["unreadable_skipped"] == 0 and composition["recomputed_from_csv"] is False
    assert composition["options"]["urbansound_exclude"] == ["children_playing", "street_music"]
    assert "Noise pool noise.csv: 13 files" in caplog.text
    assert "urbansound8k: 8 files = 61.5 % of file draws" in caplog.text
    assert "musan/noise: 4 files = 30.8 % of file draws" in caplog.text


def test_composition_is_recomputed_from_an_already_prepared_csv(corpus, tmp_path, caplog):
    save = str(tmp_path)
    path = prepare_noise(save, musan_folder=corpus["musan"], urbansound_folder=corpus["urbansound"])
    first = read_composition(path)
    os.remove(composition_path(path))
    os.utime(path, (1_000_000_000, 1_000_000_000))
    with caplog.at_level(logging.INFO, logger="robustdistiller.data.prepare"):
        assert prepare_noise(save, musan_folder=corpus["musan"], urbansound_folder=corpus["urbansound"]) == path
    assert os.stat(path).st_mtime == 1_000_000_000  # the CSV was not prepared again
    second = read_composition(path)
    assert second["recomputed_from_csv"] is True and second["unreadable_skipped"] is None
    assert second["sources"] == first["sources"]  # excluded clips recounted from the file names
    assert "Recomputed" in caplog.text and "urbansound8k: 8 files" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="robustdistiller.data.prepare"):  # present: read, logged again
        prepare_noise(save, musan_folder=corpus["musan"], urbansound_folder=corpus["urbansound"])
    assert "Recomputed" not in caplog.text and "urbansound8k: 8 files" in caplog.text
    # a stale composition (other options) is not trusted
    prepare_noise(save, musan_folder=corpus["musan"], csv_name="musan_only.csv")
    stale = read_composition(path)
    stale["options"]["musan_subsets"] = ["music"]
    with open(composition_path(path), "w") as json_file:
        json.dump(stale, json_file)
    prepare_noise(save, musan_folder=corpus["musan"], urbansound_folder=corpus["urbansound"])
    assert read_composition(path)["sources"] == first["sources"]
    assert sorted(read_composition(os.path.join(save, "musan_only.csv"))["sources"]) == ["musan/noise"]
    # RIRs alike
    rir_path = prepare_rirs(save, corpus["rirs"], rirs_noises_subsets=["simulated", "real"])
    rir_first = read_composition(rir_path)
    os.remove(composition_path(rir_path))
    prepare_rirs(save, corpus["rirs"], rirs_noises_subsets=["simulated", "real"])
    rir_second = read_composition(rir_path)
    assert rir_second["recomputed_from_csv"] is True
    assert rir_second["sources"] == rir_first["sources"] and rir_second["by_kind"] == rir_first["by_kind"]


def test_rir_composition_of_the_authors_simulated_and_real_pool(corpus, tmp_path, caplog):
    rirs = corpus["rirs"]
    with caplog.at_level(logging.INFO, logger="robustdistiller.data.prepare"):
        path = prepare_rirs(str(tmp_path), rirs, rirs_noises_subsets=["simulated", "real"])
    assert os.path.basename(composition_path(path)) == "rirs_composition.json"
    composition = read_composition(path)
    real_list = _list_entries(os.path.join(rirs, "real_rirs_isotropic_noises", "rir_list"))
    expected = {"real_rirs_isotropic_noises": [os.path.join(os.path.dirname(rirs), p) for _, p in real_list]}
    for size in ("smallroom", "mediumroom", "largeroom"):
        entries = _list_entries(os.path.join(rirs, "simulated_rirs", size, "rir_list"))
        expected[f"simulated_rirs/{size}"] = [os.path.join(os.path.dirname(rirs), p) for _, p in entries]
    assert {name: len(paths) for name, paths in expected.items()} == {
        "real_rirs_isotropic_noises": 3,
        "simulated_rirs/smallroom": 2,
        "simulated_rirs/mediumroom": 2,
        "simulated_rirs/largeroom": 2,
    }
    assert composition["pool"] == "rirs" and composition["files"] == 9 == len(_read_rows(path))
    assert sorted(composition["sources"]) == sorted(expected)
    total_seconds = sum(sum(_durations(paths)) for paths in expected.values())
    for name, paths in expected.items():
        source = composition["sources"][name]
        assert source["kind"] == ("real" if name.startswith("real") else "simulated")
        assert source["files"] == len(paths) and source["draw_share"] == pytest.approx(len(paths) / 9, abs=1e-6)
        assert source["hours"] == pytest.approx(sum(_durations(paths)) / 3600, abs=1e-6)
        assert source["folder"] == os.path.join(rirs, *name.split("/"))
    assert composition["sources"]["real_rirs_isotropic_noises"]["parts"] == {
        "RVB2014": {
            "files": 2,
            "hours": pytest.approx(sum(_durations(expected["real_rirs_isotropic_noises"][:2])) / 3600, abs=1e-6),
        },
        "air": {
            "files": 1,
            "hours": pytest.approx(_durations(expected["real_rirs_isotropic_noises"][2:])[0] / 3600, abs=1e-6),
        },
    }
    by_kind = composition["by_kind"]
    assert sorted(by_kind) == ["real", "simulated"]
    assert (by_kind["real"]["files"], by_kind["simulated"]["files"]) == (3, 6)
    assert by_kind["real"]["draw_share"] == pytest.approx(1 / 3, abs=1e-6)
    assert by_kind["simulated"]["draw_share"] == pytest.approx(2 / 3, abs=1e-6)
    real_seconds = sum(_durations(expected["real_rirs_isotropic_noises"]))
    assert by_kind["real"]["hours_share"] == pytest.approx(real_seconds / total_seconds, abs=1e-6)
    assert composition["hours"] == pytest.approx(total_seconds / 3600, abs=1e-6)
    assert "RIR pool rirs.csv: 9 RIRs" in caplog.text
    assert "real 3 files (33.3 % of draws" in caplog.text and "simulated 6 files (66.7 % of draws" in caplog.text
    # our default: real RIRs only
    path = prepare_rirs(str(tmp_path / "default"), rirs)
    composition = read_composition(path)
    assert list(composition["sources"]) == ["real_rirs_isotropic_noises"]
    assert list(composition["by_kind"]) == ["real"]
    assert composition["by_kind"]["real"]["files"] == 3 and composition["by_kind"]["real"]["draw_share"] == 1.0


def test_rir_composition_of_a_dns_folder(corpus, tmp_path):
    dns = tmp_path / "impulse_responses"
    shutil.copytree(corpus["rirs"], dns / "SLR28" / "RIRS_NOISES")
    slr26 = dns / "SLR26" / "simulated_rirs_48k" / "smallroom" / "Room001"
    slr26.mkdir(parents=True)
    for index in (1, 2):
        soundfile.write(slr26 / f"Room001-0000{index}.wav", np.r_[1.0, np.zeros(4799)], 48000)
    path = prepare_rirs(str(tmp_path / "save"), str(dns), rir_format="dns")
    composition = read_composition(path)
    files = {name: source["files"] for name, source in composition["sources"].items()}
    assert files == {
        "SLR26/simulated_rirs_48k/smallroom": 2,
        "SLR28/RIRS_NOISES/real_rirs_isotropic_noises": 3,  # its isotropic noises left out
        "SLR28/RIRS_NOISES/simulated_rirs/largeroom": 2,
        "SLR28/RIRS_NOISES/simulated_rirs/mediumroom": 2,
        "SLR28/RIRS_NOISES/simulated_rirs/smallroom": 2,
    }
    assert {kind: entry["files"] for kind, entry in composition["by_kind"].items()} == {"real": 3, "simulated": 8}
    assert composition["sources"]["SLR26/simulated_rirs_48k/smallroom"]["hours"] == pytest.approx(0.2 / 3600, abs=1e-6)
