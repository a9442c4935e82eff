"""s3prl 0.4.18's vocabularies, class maps, ER split and VoxCeleb1 layouts (issue 19, items 5-7).

Every expected order below is written out from s3prl 0.4.18's own files (facts, not files read at run
time): ASR ``downstream/asr/char.dict`` behind the specials of its fairseq ``Dictionary``; PR
``downstream/ctc/vocab/phoneme.txt`` behind ``<pad> <eos> <unk>`` (``downstream/ctc/text.py``); ER the
``labels`` of ``downstream/emotion/meta_data/*/*.json``; SID ``int(id[2:]) - 10001``
(``downstream/voxceleb1/dataset.py``). The ER dev sets are pinned by the SHA-256 of their sorted ids,
computed from s3prl's ``meta_data/SessionN/train_meta_data.json`` with ``torch.manual_seed(0)`` and
``random_split`` (``downstream/emotion/expert.py``).
"""

from pathlib import Path
import csv
import hashlib
import importlib.util
import io
import os

import numpy as np
import pytest
import soundfile
import torch

from tests.conftest import REPOSITORY_ROOT

from robustdistiller.downstream.classification import fixed_order_encoder, sorted_column_values
from robustdistiller.downstream.ctc import character_vocabulary, phone_vocabulary
from robustdistiller.downstream.s3prl_lists import ER_CLASSES, read_iemocap_s3prl_order
from robustdistiller.downstream.voxceleb1 import voxceleb1_wav_folders
from robustdistiller.testing.fixtures.voxceleb1 import generate_voxceleb1

# s3prl 0.4.18 downstream/asr/char.dict, in file order
S3PRL_CHAR_DICT = [
    "|",
    "E",
    "T",
    "A",
    "O",
    "N",
    "I",
    "H",
    "S",
    "R",
    "D",
    "L",
    "U",
    "M",
    "C",
    "W",
    "F",
    "G",
    "Y",
    "P",
    "B",
    "V",
    "K",
    "'",
    "X",
    "J",
    "Q",
    "Z",
]
# s3prl 0.4.18 downstream/ctc/vocab/phoneme.txt, in file order
S3PRL_PHONEME_TXT = (
    "SIL SPN AA0 AA1 AA2 AE0 AE1 AE2 AH0 AH1 AH2 AO0 AO1 AO2 AW0 AW1 AW2 AY0 AY1 AY2 B CH D DH EH0 EH1 EH2 "
    "ER0 ER1 ER2 EY0 EY1 EY2 F G HH IH0 IH1 IH2 IY0 IY1 IY2 JH K L M N NG OW0 OW1 OW2 OY0 OY1 OY2 P R S SH T "
    "TH UH0 UH1 UH2 UW0 UW1 UW2 V W Y Z ZH"
).split()
# s3prl's dev set of each ER fold: (pool size, dev size, sha256 of the sorted dev ids, first two dev ids)
S3PRL_ER_DEV = {
    1: (
        4446,
        890,
        "81f022a7013b2f04ccdbad1ae47738fb30f0e06d6c58e33559e48560b61066eb",
        ["Ses02M_impro05_F008", "Ses03F_script01_1_M016"],
    ),
    2: (
        4508,
        902,
        "99fab34a5c23ff9f2e1be1a98002e1b6d20a4fa26a5eef9f23a2fdd1a5eb8893",
        ["Ses04F_impro07_F066", "Ses03F_script03_2_M044"],
    ),
    3: (
        4380,
        876,
        "36509928efafbd583a37b681269e9c757c5ef8f5aa959ac9cf37419a167a8098",
        ["Ses01M_impro03_F010", "Ses05F_impro06_F024"],
    ),
    4: (
        4500,
        900,
        "b7c5f2815b4fd47e05cd797835deb36f2b042056a867a05b12a8e2ebe7452865",
        ["Ses01M_script03_1_F015", "Ses05M_script03_2_F009"],
    ),
    5: (
        4290,
        858,
        "5760897836dd6cc86c8480c124a429a0c3c5cd5c66ce53a5109e915247937b4e",
        ["Ses02F_impro03_M024", "Ses03F_impro04_M015"],
    ),
}


def _load_recipe_module(recipe, file_name, name, monkeypatch):
    folder = os.path.join(REPOSITORY_ROOT, "recipes", *recipe.split("/"))
    monkeypatch.syspath_prepend(folder)
    spec = importlib.util.spec_from_file_location(name, os.path.join(folder, file_name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as fout:
        writer = csv.writer(fout)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def _class_order(encoder):
    return [encoder.ind2lab[index] for index in range(len(encoder))]


# ---------------------------------------------------------------------------------- item 5 ---


def test_asr_outputs_are_s3prls_dictionary_order():
    vocabulary = character_vocabulary()
    # fairseq's Dictionary (s3prl's copy) adds <s>, <pad>, </s>, <unk> before the file; <s> is the blank
    assert vocabulary.tokens == ["<s>", "<pad>", "</s>", "<unk>"] + S3PRL_CHAR_DICT
    assert vocabulary.blank_index == 0 and len(vocabulary) == 32
    assert vocabulary.index["C"] == 18 and vocabulary.index["W"] == 19


def test_pr_outputs_are_s3prls_phoneme_txt_order():
    vocabulary = phone_vocabulary()
    assert vocabulary.tokens == ["<pad>", "<eos>", "<unk>"] + S3PRL_PHONEME_TXT
    assert vocabulary.blank_index == 0 and vocabulary.index["<eos>"] == 1 and len(vocabulary) == 74
    assert vocabulary.index["AA0"] == 5 and vocabulary.index["B"] == 23 and vocabulary.index["ZH"] == 73


def test_er_classes_follow_s3prls_map_not_the_training_order(tmp_path, monkeypatch):
    assert ER_CLASSES == ("neu", "hap", "ang", "sad")
    train_module = _load_recipe_module("IEMOCAP/ER", "train.py", "er_train_for_orders", monkeypatch)
    header = ["ID", "duration", "wav", "start", "stop", "emotion", "speaker", "session"]
    csv_files = {}
    for split, emotions in (
        ("train", ["sad", "ang", "hap", "neu", "sad"]),
        ("dev", ["ang", "neu"]),
        ("test", ["hap", "sad"]),
    ):
        rows = [
            [f"{split}{index}", "1.0", f"/x/{split}{index}.wav", 0, -1, emotion, "Ses01F", 1]
            for index, emotion in enumerate(emotions)
        ]
        csv_files[split] = _write_csv(tmp_path / f"{split}.csv", header, rows)
    hparams = {
        "train_csv": csv_files["train"],
        "dev_csv": csv_files["dev"],
        "test_csv": csv_files["test"],
        "sample_rate": 16000,
        "seed": 0,
        "max_train_samples": None,
        "save_folder": str(tmp_path),
        "num_emotions": 4,
        "test_session": 1,
    }
    data = train_module.dataio_prepare(hparams, None, None)
    assert data["label_encoder"].lab2ind == {"neu": 0, "hap": 1, "ang": 2, "sad": 3}


def test_sid_classes_are_in_speaker_id_order(tmp_path, monkeypatch):
    train_module = _load_recipe_module("VoxCeleb1/SID", "train.py", "sid_train_for_orders", monkeypatch)
    header = ["ID", "duration", "wav", "start", "stop", "speaker"]
    speakers = {"train": ["id10003", "id10001", "id10270", "id10002"], "dev": ["id10002"], "test": ["id10270"]}
    csv_files = {
        split: _write_csv(
            tmp_path / f"{split}.csv",
            header,
            [[f"{split}{index}", "1.0", "/x.wav", 0, -1, speaker] for index, speaker in enumerate(names)],
        )
        for split, names in speakers.items()
    }
    hparams = {
        "train_csv": csv_files["train"],
        "dev_csv": csv_files["dev"],
        "test_csv": csv_files["test"],
        "sample_rate": 16000,
        "seed": 0,
        "max_train_samples": None,
        "save_folder": str(tmp_path),
        "num_speakers": 4,
    }
    data = train_module.dataio_prepare(hparams, None, None)
    # s3prl: int(id[2:]) - 10001, i.e. speaker id order (on VoxCeleb1 the ids are id10001 ... id11251)
    assert _class_order(data["label_encoder"]) == ["id10001", "id10002", "id10003", "id10270"]
    with pytest.raises(ValueError, match="4 speakers, but num_speakers is 1251"):
        train_module.dataio_prepare(dict(hparams, num_speakers=1251), None, None)


def test_fixed_order_encoder_checks_labels_and_an_earlier_encoder(tmp_path):
    header = ["ID", "emotion"]
    good = {"train": _write_csv(tmp_path / "train.csv", header, [["a", "sad"], ["b", "neu"]])}
    encoder = fixed_order_encoder(ER_CLASSES, str(tmp_path / "label_encoder.txt"), good, "emotion")
    assert _class_order(encoder) == ["neu", "hap", "ang", "sad"]
    # an earlier run's encoder with the same order is reused; one with another order is refused
    assert _class_order(fixed_order_encoder(ER_CLASSES, str(tmp_path / "label_encoder.txt"), good, "emotion")) == [
        "neu",
        "hap",
        "ang",
        "sad",
    ]
    with pytest.raises(ValueError, match="label_encoder.txt numbers the classes .*new output folder"):
        fixed_order_encoder(["sad", "neu", "hap", "ang"], str(tmp_path / "label_encoder.txt"), good, "emotion")
    bad = {"test": _write_csv(tmp_path / "test.csv", header, [["c", "fru"]])}
    with pytest.raises(ValueError, match=r"test.csv \(test\) has emotion values outside .*'fru'"):
        fixed_order_encoder(ER_CLASSES, str(tmp_path / "other.txt"), bad, "emotion")
    with pytest.raises(ValueError, match="duplicates"):
        fixed_order_encoder(["neu", "neu"], str(tmp_path / "dup.txt"), good, "emotion")
    assert sorted_column_values(good.values(), "emotion") == ["neu", "sad"]


# ---------------------------------------------------------------------------------- item 7 ---


def test_packaged_iemocap_order_is_s3prls_metadata():
    order = read_iemocap_s3prl_order()
    assert len(order) == len({utterance for utterance, _ in order}) == 5531
    sessions = [utterance[:5] for utterance, _ in order]
    # session by session, ascending, with s3prl's test-list sizes
    assert [sessions.count(f"Ses0{session}") for session in range(1, 6)] == [1085, 1023, 1151, 1031, 1241]
    assert sessions == sorted(sessions)
    labels = [label for _, label in order]
    assert {label: labels.count(label) for label in ER_CLASSES} == {"neu": 1708, "hap": 1636, "ang": 1103, "sad": 1084}
    # the first entry of each session's block in s3prl's test_meta_data.json
    firsts = [order[sessions.index(f"Ses0{session}")] for session in range(1, 6)]
    assert firsts == [
        ("Ses01F_script02_2_F000", "neu"),
        ("Ses02F_impro03_F000", "hap"),
        ("Ses03F_script02_1_F000", "sad"),
        ("Ses04F_script03_1_F005", "hap"),
        ("Ses05M_script01_3_F000", "neu"),
    ]


def test_iemocap_order_is_declared_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    with open(os.path.join(REPOSITORY_ROOT, "pyproject.toml"), "rb") as fin:
        package_data = tomllib.load(fin)["tool"]["setuptools"]["package-data"]
    assert "package_data/*.tsv" in package_data["robustdistiller.downstream"]
    path = os.path.join(REPOSITORY_ROOT, "robustdistiller", "downstream", "package_data", "iemocap_s3prl_order.tsv")
    with open(path, encoding="utf-8") as fin:
        header = fin.readline()
    assert header.startswith("#") and "s3prl" in header  # the file names its source


@pytest.fixture(scope="module")
def full_size_release(tmp_path_factory):
    """An IEMOCAP_full_release with s3prl's 5,531 utterance ids and labels (20-sample wavs) plus a dropped one."""
    root = tmp_path_factory.mktemp("iemocap_full") / "IEMOCAP_full_release"
    dialogs = {}
    for utterance, label in read_iemocap_s3prl_order():
        dialogs.setdefault(utterance.rsplit("_", 1)[0], []).append((utterance, label))
    dialogs.setdefault("Ses01F_impro01", []).append(("Ses01F_impro01_F999", "fru"))  # dropped by the recipe
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(20, dtype=np.int16), 16000, format="WAV", subtype="PCM_16")
    wav_bytes = buffer.getvalue()  # written as bytes: 5,531 soundfile calls would take much longer
    for dialog, utterances in dialogs.items():
        session = f"Session{int(dialog[3:5])}"
        wav_folder = root / session / "sentences" / "wav" / dialog
        label_folder = root / session / "dialog" / "EmoEvaluation"
        wav_folder.mkdir(parents=True)
        label_folder.mkdir(parents=True, exist_ok=True)
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        for index, (utterance, label) in enumerate(utterances):
            (wav_folder / f"{utterance}.wav").write_bytes(wav_bytes)
            # every second hap is written as exc, which the recipe merges into hap as s3prl does
            written = "exc" if label == "hap" and index % 2 else label
            lines += [f"[{index}.0000 - {index}.0010]\t{utterance}\t{written}\t[2.5000, 2.5000, 2.5000]", ""]
        (label_folder / f"{dialog}.txt").write_text("\n".join(lines))
    return str(root)


def _ids(path):
    with open(path, newline="", encoding="utf-8") as fin:
        return [row["ID"] for row in csv.DictReader(fin)]


@pytest.mark.parametrize("session", [1, 4])
def test_er_default_dev_set_is_s3prls(full_size_release, tmp_path, session, monkeypatch):
    prepare = _load_recipe_module("IEMOCAP/ER", "prepare_iemocap.py", "prepare_iemocap_for_orders", monkeypatch)
    paths = prepare.prepare_iemocap(full_size_release, str(tmp_path / "s3prl"), test_session=session)
    train, dev, test = (_ids(paths[split]) for split in ("train", "dev", "test"))
    pool_size, dev_size, digest, _ = S3PRL_ER_DEV[session]
    assert len(train) + len(dev) == pool_size and len(dev) == dev_size
    assert hashlib.sha256("\n".join(sorted(dev)).encode()).hexdigest() == digest
    assert {utterance[:5] for utterance in test} == {f"Ses0{session}"} and "Ses01F_impro01_F999" not in train + dev

    # the sorted split stays available: random_split seeded 0 over the pool sorted by id
    paths = prepare.prepare_iemocap(
        full_size_release, str(tmp_path / "sorted"), test_session=session, dev_split_order="sorted"
    )
    pool = sorted(_ids(paths["train"]) + _ids(paths["dev"]))
    permutation = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0)).tolist()
    sorted_dev = {pool[index] for index in permutation[int(0.8 * len(pool)) :]}
    assert set(_ids(paths["dev"])) == sorted_dev
    assert len(sorted_dev & set(dev)) < 0.3 * dev_size  # chance level: not s3prl's dev set


def test_er_s3prl_order_refuses_other_data(full_size_release, tmp_path, monkeypatch):
    prepare = _load_recipe_module("IEMOCAP/ER", "prepare_iemocap.py", "prepare_iemocap_for_orders", monkeypatch)
    with pytest.raises(ValueError, match="dev_split_order must be one of"):
        prepare.prepare_iemocap(full_size_release, str(tmp_path / "a"), dev_split_order="random")
    with pytest.raises(ValueError, match="needs dev_split_order: s3prl"):
        prepare.prepare_iemocap(
            full_size_release, str(tmp_path / "b"), dev_split_order="sorted", s3prl_meta_data_folder=str(tmp_path)
        )
    # a release with one utterance relabelled is not s3prl's data
    label_file = os.path.join(full_size_release, "Session3", "dialog", "EmoEvaluation", "Ses03F_impro01.txt")
    text = Path(label_file).read_text(encoding="utf-8")
    try:
        first = text.split("\n")[2].split("\t")
        replacement = "sad" if first[2] != "sad" else "neu"
        with open(label_file, "w", encoding="utf-8") as fout:
            fout.write(text.replace("\t".join(first[:3]), "\t".join(first[:2] + [replacement]), 1))
        expected = rf"1 with another label \(e.g. \['{first[1]}'\]\).*dev_split_order: sorted"
        with pytest.raises(ValueError, match=expected):
            prepare.prepare_iemocap(full_size_release, str(tmp_path / "c"), test_session=1)
    finally:
        with open(label_file, "w", encoding="utf-8") as fout:
            fout.write(text)


# ---------------------------------------------------------------------------------- item 6 ---


@pytest.fixture(scope="module")
def voxceleb1_both_layouts(tmp_path_factory):
    options = dict(seed=0, dev_speakers=5, test_speakers=3, videos_per_speaker=2, utterances_per_video=2)
    merged = generate_voxceleb1(str(tmp_path_factory.mktemp("merged")), **options)
    s3prl = generate_voxceleb1(str(tmp_path_factory.mktemp("s3prl")), layout="s3prl", **options)
    return merged, s3prl


def _rows(path, root):
    """CSV rows with the wav path made relative to the corpus root."""
    with open(path, newline="", encoding="utf-8") as fin:
        return [dict(row, wav=os.path.relpath(row["wav"], root)) for row in csv.DictReader(fin)]


def test_voxceleb1_s3prl_layout_is_written_as_documented(voxceleb1_both_layouts):
    merged, s3prl = voxceleb1_both_layouts
    assert sorted(os.listdir(os.path.join(s3prl, "dev", "wav"))) == [f"id1000{index}" for index in range(1, 6)]
    assert sorted(os.listdir(os.path.join(s3prl, "test", "wav"))) == ["id10270", "id10271", "id10272"]
    assert not os.path.exists(os.path.join(s3prl, "wav")) and os.path.isdir(os.path.join(merged, "wav"))
    assert [os.path.relpath(folder, s3prl) for folder in voxceleb1_wav_folders(s3prl)] == ["dev/wav", "test/wav"]


def test_sid_reads_both_layouts_alike(voxceleb1_both_layouts, tmp_path, monkeypatch):
    prepare = _load_recipe_module("VoxCeleb1/SID", "prepare_voxceleb1_sid.py", "prepare_sid_for_orders", monkeypatch)
    merged, s3prl = voxceleb1_both_layouts
    tables = {}
    for name, root in (("merged", merged), ("s3prl", s3prl)):
        paths = prepare.prepare_voxceleb1_sid(root, str(tmp_path / name))
        tables[name] = {split: _rows(path, root) for split, path in paths.items()}
    for split in ("train", "dev", "test"):
        assert [row["ID"] for row in tables["merged"][split]] == [row["ID"] for row in tables["s3prl"][split]]
        assert all(row["wav"].startswith("wav/") for row in tables["merged"][split])
        assert all(
            row["wav"].startswith("test/wav/id1027" if row["speaker"].startswith("id1027") else "dev/wav/")
            for row in tables["s3prl"][split]
        )
        strip = [{key: value for key, value in row.items() if key != "wav"} for row in tables["merged"][split]]
        assert strip == [{key: value for key, value in row.items() if key != "wav"} for row in tables["s3prl"][split]]
    assert {row["speaker"] for row in tables["s3prl"]["test"]} >= {"id10001", "id10270"}


def test_asv_reads_both_layouts_alike(voxceleb1_both_layouts, tmp_path, monkeypatch):
    prepare = _load_recipe_module("VoxCeleb1/ASV", "prepare_voxceleb1_asv.py", "prepare_asv_for_orders", monkeypatch)
    merged, s3prl = voxceleb1_both_layouts
    tables = {}
    for name, root in (("merged", merged), ("s3prl", s3prl)):
        paths = prepare.prepare_voxceleb1_asv(root, str(tmp_path / name), valid_speakers=2, min_train_duration=0.0)
        tables[name] = {
            split: _rows(path, root) if split in ("train", "valid", "test") else Path(path).read_text()
            for split, path in paths.items()
        }
    assert tables["merged"]["test_trials"] == tables["s3prl"]["test_trials"]
    assert tables["merged"]["valid_trials"] == tables["s3prl"]["valid_trials"]
    for split in ("train", "valid", "test"):
        assert [row["ID"] for row in tables["merged"][split]] == [row["ID"] for row in tables["s3prl"][split]]
        assert tables["merged"][split]
    assert all(row["wav"].startswith("dev/wav/") for row in tables["s3prl"]["train"])
    assert all(row["wav"].startswith("test/wav/") for row in tables["s3prl"]["test"])


def test_voxceleb1_without_either_layout_names_both(tmp_path, monkeypatch):
    (tmp_path / "VoxCeleb1" / "vox1_dev_wav").mkdir(parents=True)  # an archive unpacked elsewhere
    for recipe, file_name, function in (
        ("VoxCeleb1/SID", "prepare_voxceleb1_sid.py", "prepare_voxceleb1_sid"),
        ("VoxCeleb1/ASV", "prepare_voxceleb1_asv.py", "prepare_voxceleb1_asv"),
    ):
        prepare = _load_recipe_module(recipe, file_name, f"{function}_for_orders", monkeypatch)
        with pytest.raises(FileNotFoundError) as error:
            getattr(prepare, function)(str(tmp_path / "VoxCeleb1"), str(tmp_path / "save"))
        message = str(error.value)
        assert "has no wav folder" in message and "<data_folder>/wav/idNNNNN" in message
        assert "<data_folder>/dev/wav/idNNNNN" in message and "<data_folder>/test/wav/idNNNNN" in message
        assert os.path.join(str(tmp_path / "VoxCeleb1"), "*", "wav") in message
