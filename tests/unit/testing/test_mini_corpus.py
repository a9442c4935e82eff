"""Tests of the mini-corpus generator: reproducibility, real on-disk layouts, audio properties."""

import os
import re

import numpy as np
import pytest
import soundfile

from robustdistiller.testing.mini_corpus import generate_mini_corpus, main

SMALL_OPTIONS = dict(
    train_speakers=2,
    valid_speakers=1,
    utterances_per_speaker=3,
    valid_utterances_per_speaker=2,
    num_noises=5,
    num_music=2,
    num_speech=1,
    rooms_per_size=1,
    rirs_per_room=2,
    noise_duration=1.0,
    show_progress=False,
)


def _tree(folder):
    """``{relative path: bytes}`` of every file under ``folder``."""
    contents = {}
    for directory, _, file_names in os.walk(folder):
        for file_name in file_names:
            path = os.path.join(directory, file_name)
            with open(path, "rb") as file:
                contents[os.path.relpath(path, folder)] = file.read()
    return contents


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mini_corpus")
    roots = generate_mini_corpus(str(folder), seed=0, **SMALL_OPTIONS)
    return folder, roots


def test_same_seed_gives_byte_identical_files(corpus, tmp_path):
    folder, _ = corpus
    generate_mini_corpus(str(tmp_path), seed=0, **SMALL_OPTIONS)
    first, second = _tree(folder), _tree(tmp_path)
    assert sorted(first) == sorted(second)
    different = [path for path in first if first[path] != second[path]]
    assert different == []


def test_different_seed_gives_different_audio(corpus, tmp_path):
    folder, _ = corpus
    generate_mini_corpus(str(tmp_path), seed=1, **SMALL_OPTIONS)
    first, second = _tree(folder), _tree(tmp_path)
    first_flacs = sorted(path for path in first if path.endswith(".flac"))
    second_flacs = sorted(path for path in second if path.endswith(".flac"))
    assert first_flacs != second_flacs  # other speakers and chapters
    common_wavs = [path for path in first if path.endswith(".wav") and path in second]
    assert common_wavs and all(first[path] != second[path] for path in common_wavs)


def test_librispeech_layout_and_transcripts(corpus):
    _, roots = corpus
    librispeech = roots["librispeech"]
    assert os.path.basename(librispeech) == "LibriSpeech"
    pattern = re.compile(
        r"^(SPEAKERS\.TXT|README\.TXT|(train-clean-100|dev-clean)/(\d+)/(\d+)/"
        r"(\3-\4-\d{4}\.flac|\3-\4\.trans\.txt))$"
    )
    files = _tree(librispeech)
    assert [path for path in files if not pattern.match(path)] == []
    speakers = {}
    for subset in ("train-clean-100", "dev-clean"):
        speakers[subset] = set(os.listdir(os.path.join(librispeech, subset)))
        flacs = [path for path in files if path.startswith(subset) and path.endswith(".flac")]
        assert len(flacs) == (6 if subset == "train-clean-100" else 2)
    assert len(speakers["train-clean-100"]) == 2 and len(speakers["dev-clean"]) == 1
    assert not speakers["train-clean-100"] & speakers["dev-clean"]
    for path in (path for path in files if path.endswith(".trans.txt")):
        chapter_folder = os.path.join(librispeech, os.path.dirname(path))
        lines = files[path].decode().splitlines()
        transcript_ids = [line.split()[0] for line in lines]
        flac_ids = sorted(name[:-5] for name in os.listdir(chapter_folder) if name.endswith(".flac"))
        assert sorted(transcript_ids) == flac_ids
        for line in lines:
            words = line.split()[1:]
            assert 5 <= len(words) <= 10 and all(word.isupper() and word.isalpha() for word in words)
    speaker_table = files["SPEAKERS.TXT"].decode()
    for speaker in speakers["train-clean-100"] | speakers["dev-clean"]:
        assert re.search(rf"^{speaker}\s*\|", speaker_table, re.MULTILINE)


def test_speech_is_16k_mono_and_not_silent(corpus):
    _, roots = corpus
    for directory, _, file_names in os.walk(roots["librispeech"]):
        for file_name in (name for name in file_names if name.endswith(".flac")):
            waveform, rate = soundfile.read(os.path.join(directory, file_name))
            assert rate == 16000 and waveform.ndim == 1
            assert 1.0 < len(waveform) / rate < 6.0
            frame_energy = np.square(waveform[: len(waveform) // 400 * 400].reshape(-1, 400)).mean(1)
            assert np.sqrt(frame_energy.max()) > 0.05  # loud speech frames
            assert np.sqrt(frame_energy.min()) < 0.01  # and pauses: not stationary noise
            assert np.abs(waveform).max() < 1.0


def test_musan_layout(corpus):
    _, roots = corpus
    musan = roots["musan"]
    audio = []
    for directory, _, file_names in os.walk(musan):
        relative = os.path.relpath(directory, musan)
        wavs = [name for name in file_names if name.endswith(".wav")]
        if wavs:
            assert {"ANNOTATIONS", "LICENSE"} <= set(file_names), relative
            category, source = relative.split(os.sep)
            assert category in ("noise", "music", "speech")
            for name in wavs:
                assert re.match(rf"^{category}-{source}-\d{{4}}\.wav$", name)
                audio.append((category, soundfile.info(os.path.join(directory, name))))
    counts = {category: sum(1 for kind, _ in audio if kind == category) for category in ("noise", "music", "speech")}
    assert counts == {"noise": 6, "music": 2, "speech": 1}
    unusual = [info for _, info in audio if info.channels != 1 or info.samplerate != 16000]
    assert len(unusual) == 1 and unusual[0].channels == 2 and unusual[0].samplerate == 44100


def _read_list(path):
    with open(path) as list_file:
        return [line.split() for line in list_file if line.strip()]


def test_rirs_noises_layout(corpus):
    folder, roots = corpus
    rirs = roots["rirs"]
    simulated_lines = []
    for size in ("smallroom", "mediumroom", "largeroom"):
        lines = _read_list(os.path.join(rirs, "simulated_rirs", size, "rir_list"))
        for fields in lines:
            assert fields[0] == "--rir-id" and fields[2] == "--room-id"
            assert re.match(rf"^RIRS_NOISES/simulated_rirs/{size}/(Room\d{{3}})/\1-\d{{5}}\.wav$", fields[4])
            assert os.path.isfile(os.path.join(folder, fields[4]))
        simulated_lines += lines
    assert len(simulated_lines) == 6
    for fields in simulated_lines:
        rir, rate = soundfile.read(os.path.join(folder, fields[4]))
        assert rate == 16000 and rir.ndim == 1
        peak = int(np.argmax(np.abs(rir)))
        assert peak < 0.011 * rate  # direct path first
        tenth = len(rir) // 10
        assert np.square(rir[-tenth:]).sum() < 0.01 * np.square(rir[peak + 1 : peak + 1 + tenth]).sum()

    real = os.path.join(rirs, "real_rirs_isotropic_noises")
    rir_paths = [fields[-1] for fields in _read_list(os.path.join(real, "rir_list"))]
    noise_lines = _read_list(os.path.join(real, "noise_list"))
    noise_paths = [fields[-1] for fields in noise_lines]
    assert rir_paths and noise_paths and not set(rir_paths) & set(noise_paths)
    assert all(
        fields[:6] == ["--noise-id", fields[1], "--noise-type", "isotropic", "--bg-fg-type", "background"]
        and fields[6] == "--room-linkage"
        for fields in noise_lines
    )
    for relative in rir_paths + noise_paths:
        assert relative.startswith("RIRS_NOISES/real_rirs_isotropic_noises/")
        assert soundfile.info(os.path.join(folder, relative)).channels > 1
    on_disk = {name for name in os.listdir(real) if name.endswith(".wav")}
    assert on_disk == {os.path.basename(path) for path in rir_paths + noise_paths}
    pointsource = _read_list(os.path.join(rirs, "pointsource_noises", "noise_list"))
    assert len(pointsource) == 2 and all(os.path.isfile(os.path.join(folder, f[-1])) for f in pointsource)


def test_existing_generation_is_skipped_and_changed_options_regenerate(tmp_path):
    options = dict(SMALL_OPTIONS, train_speakers=1, utterances_per_speaker=1, num_noises=1)
    generate_mini_corpus(str(tmp_path), seed=3, **options)
    stamps = {path: os.stat(os.path.join(tmp_path, path)).st_mtime_ns for path in _tree(tmp_path)}
    generate_mini_corpus(str(tmp_path), seed=3, **options)
    assert stamps == {path: os.stat(os.path.join(tmp_path, path)).st_mtime_ns for path in _tree(tmp_path)}
    before = _tree(tmp_path)
    generate_mini_corpus(str(tmp_path), seed=4, **options)
    after = _tree(tmp_path)
    noise = "musan/noise/free-sound/noise-free-sound-0000.wav"
    assert before[noise] != after[noise]
    assert not set(path for path in before if path.endswith(".flac")) & set(after)  # no stale files


def test_refuses_to_overwrite_folders_it_did_not_write(tmp_path):
    (tmp_path / "LibriSpeech").mkdir()
    (tmp_path / "LibriSpeech" / "precious.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="LibriSpeech"):
        generate_mini_corpus(str(tmp_path), **SMALL_OPTIONS)
    assert (tmp_path / "LibriSpeech" / "precious.txt").read_text() == "user data"


def test_command_line(tmp_path, capsys):
    main(
        [
            str(tmp_path),
            "--seed",
            "2",
            "--train-speakers",
            "1",
            "--valid-speakers",
            "1",
            "--utterances-per-speaker",
            "1",
        ]
    )
    printed = capsys.readouterr().out
    assert f"librispeech: {tmp_path / 'LibriSpeech'}" in printed
    assert (tmp_path / "mini_corpus.json").is_file()


URBANSOUND_CLASSES = (
    "air_conditioner",
    "car_horn",
    "children_playing",
    "dog_bark",
    "drilling",
    "engine_idling",
    "gun_shot",
    "jackhammer",
    "siren",
    "street_music",
)


def test_urbansound_layout_and_metadata(corpus):
    import csv

    from robustdistiller.data.audio import load_audio

    _, roots = corpus
    urbansound = roots["urbansound"]
    assert os.path.basename(urbansound) == "UrbanSound8K"
    assert sorted(os.listdir(os.path.join(urbansound, "audio"))) == sorted(f"fold{n}" for n in range(1, 11))
    pattern = re.compile(r"^audio/fold(\d+)/(\d+)-(\d)-(\d+)-(\d+)\.wav$")
    files = [path for path in _tree(urbansound) if path.endswith(".wav")]
    assert len(files) == 10 and all(pattern.match(path) for path in files)
    with open(os.path.join(urbansound, "metadata", "UrbanSound8K.csv"), newline="") as csv_file:
        lines = csv_file.read().splitlines()
    assert lines[0] == "slice_file_name,fsID,start,end,salience,fold,classID,class"
    with open(os.path.join(urbansound, "metadata", "UrbanSound8K.csv"), newline="") as csv_file:
        rows = list(csv.DictReader(csv_file))
    by_name = {os.path.basename(path): pattern.match(path) for path in files}
    assert sorted(row["slice_file_name"] for row in rows) == sorted(by_name)
    formats = set()
    for row in rows:
        match = by_name[row["slice_file_name"]]
        assert row["fold"] == match.group(1) and row["fsID"] == match.group(2)
        assert row["classID"] == match.group(3)
        assert row["class"] == URBANSOUND_CLASSES[int(row["classID"])]
        assert row["salience"] in ("1", "2")
        path = os.path.join(urbansound, "audio", f"fold{row['fold']}", row["slice_file_name"])
        info = soundfile.info(path)
        assert 0.2 < info.duration <= 1.0
        assert float(row["end"]) - float(row["start"]) == pytest.approx(info.duration, abs=1e-5)
        formats.add((info.samplerate, info.channels))
        waveform = load_audio(path)  # what the noise pool does: mono, 16 kHz
        assert waveform.dim() == 1 and abs(len(waveform) - 16000 * info.duration) <= 2
        assert 0.1 < float(waveform.abs().max()) < 1.0
    assert {row["class"] for row in rows} == set(URBANSOUND_CLASSES)  # children_playing, street_music too
    assert (44100, 2) in formats and len({rate for rate, _ in formats}) >= 5
    assert any(channels == 1 for _, channels in formats)
