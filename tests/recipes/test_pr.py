"""PR recipe (LibriSpeech phones): the lexicon rules, the phone vocabulary, the preparation's errors, and
prepare -> train -> every test condition on the fixture with a tiny upstream."""

from pathlib import Path
import csv
import json
import os
import re
import sys

import pytest

from tests.conftest import REPOSITORY_ROOT, corruption_overrides, folder_snapshot, run_recipe_script

from robustdistiller.downstream.ctc import phone_vocabulary, read_phone_file, stressed_arpabet_phones
from robustdistiller.downstream.librispeech import (
    add_phone_column,
    cmudict_lexicon,
    load_lexicon,
    parse_cmudict_lines,
    prepare_librispeech_splits,
    read_lexicon_files,
)
from robustdistiller.testing.fixtures.librispeech_text import (
    FALLBACK_WORDS,
    WRONG_SECOND_PRONUNCIATIONS,
    generate_librispeech_text,
)

PR_FOLDER = os.path.join(REPOSITORY_ROOT, "recipes", "LibriSpeech", "PR")
sys.path.insert(0, PR_FOLDER)  # the recipe imports its prepare script as a sibling module
import prepare_librispeech_pr as prep  # noqa: E402


@pytest.fixture(scope="module")
def librispeech(tmp_path_factory):
    return generate_librispeech_text(str(tmp_path_factory.mktemp("librispeech_text")), seed=0)


def read_csv(path):
    with open(path, encoding="utf-8") as fin:
        return list(csv.DictReader(fin))


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fout:
        fout.write(text)
    return path


# ---------------------------------------------------------------------------- vocabulary ---


def test_phone_vocabulary_has_69_stressed_phones_and_74_outputs(tmp_path):
    phones = stressed_arpabet_phones()
    assert len(phones) == 69 and len(set(phones)) == 69
    assert sum(phone[-1].isdigit() for phone in phones) == 45  # 15 vowels x 3 stresses
    vocabulary = phone_vocabulary()
    assert len(vocabulary) == 74 and vocabulary.blank_index == 0 and vocabulary.index["<eos>"] == 1
    # decoding drops <pad> and <eos> only: <unk>, SIL and SPN stay and count as errors, as in s3prl
    assert vocabulary.dropped_indices == [0, 1]
    assert vocabulary.decode(vocabulary.encode(["<pad>", "<eos>", "SIL", "AA1", "<unk>", "SPN", "ZH"])) == [
        "SIL",
        "AA1",
        "<unk>",
        "SPN",
        "ZH",
    ]
    # every cmudict phone is in the vocabulary (cmudict uses the same 39 phones with stress)
    assert {phone for pronunciation in cmudict_lexicon().values() for phone in pronunciation} <= set(phones)
    # a vocabulary file (s3prl vocab/phoneme.txt style): specials skipped, V taken from the file
    path = write(str(tmp_path / "phoneme.txt"), "SIL\nSPN\n" + "\n".join(phones[:10]) + "\n")
    assert read_phone_file(path) == phones[:10] and len(phone_vocabulary(phones_file=path)) == 15


# ------------------------------------------------------------------------------- lexicon ---


def test_lexicon_files_first_pronunciation_wins_in_list_order(tmp_path):
    first = write(str(tmp_path / "a.txt"), "HELLO\tHH AH0 L OW1\nHELLO\tHH EH0 L OW1\n\nWORLD\tW ER1 L D\n")
    second = write(str(tmp_path / "b.txt"), "HELLO\tX X\nTHERE\tDH EH1 R\nworld  W AO1 L D\n")
    lexicon = read_lexicon_files([first, second])
    assert lexicon == {"HELLO": ["HH", "AH0", "L", "OW1"], "WORLD": ["W", "ER1", "L", "D"], "THERE": ["DH", "EH1", "R"]}
    assert read_lexicon_files([second, first])["HELLO"] == ["X", "X"]  # order matters
    with pytest.raises(FileNotFoundError, match="missing.txt.*WORD<TAB>PH PH"):
        read_lexicon_files([first, str(tmp_path / "missing.txt")])
    bad = write(str(tmp_path / "bad.txt"), "HELLO\n")
    with pytest.raises(ValueError, match="bad.txt' line 1"):
        read_lexicon_files([bad])


def test_cmudict_normalisation_and_fallback(tmp_path):
    lines = [
        ";;; comment line",
        "hello HH AH0 L OW1",
        "hello(2) HH EH0 L OW1",
        "read(2) R EH1 D",
        "read R IY1 D # present tense",
        "d'artagnan D AH0 R T AE1 NG Y AH0 N",
    ]
    assert parse_cmudict_lines(lines) == {
        "HELLO": ["HH", "AH0", "L", "OW1"],
        "READ": ["R", "EH1", "D"],
        "D'ARTAGNAN": ["D", "AH0", "R", "T", "AE1", "NG", "Y", "AH0", "N"],
    }
    dictionary = cmudict_lexicon()
    assert all(word == word.upper() and "(" not in word for word in list(dictionary)[:5000])
    assert dictionary["TOMATO"] == ["T", "AH0", "M", "EY1", "T", "OW2"]  # the first variant
    own = write(str(tmp_path / "own.txt"), "TOMATO\tT AH0 M AA1 T OW2\n")
    lexicon = load_lexicon([own], fallback="cmudict")
    assert lexicon["TOMATO"] == ["T", "AH0", "M", "AA1", "T", "OW2"]  # the files win over cmudict
    assert lexicon["POTATO"] == dictionary["POTATO"]
    assert "POTATO" not in load_lexicon([own])
    with pytest.raises(ValueError, match="lexicon_fallback"):
        load_lexicon([own], fallback="g2p")


def test_out_of_vocabulary_words_error_or_skip(tmp_path, caplog):
    words_csv = write(
        str(tmp_path / "words.csv"),
        "ID,duration,wav,start,stop,spk_id,words\nu1,1.0,/a.flac,0,-1,1,HI THERE\nu2,1.0,/b.flac,0,-1,1,HI ZORBLAX\n",
    )
    lexicon = {"HI": ["HH", "AY1"], "THERE": ["DH", "EH1", "R"]}
    out = str(tmp_path / "phones.csv")
    with pytest.raises(KeyError, match=r"ZORBLAX.*u2.*lexicon_files \['x.txt'\]"):
        add_phone_column(words_csv, out, lexicon, "error", "lexicon_files ['x.txt']")
    assert not os.path.exists(out)
    with caplog.at_level("WARNING"):
        assert add_phone_column(words_csv, out, lexicon, "skip_utterance") == 1
    assert "1 of 2 utterances left out" in caplog.text and "ZORBLAX" in caplog.text
    assert [(row["ID"], row["phones"]) for row in read_csv(out)] == [("u1", "HH AY1 DH EH1 R")]
    with pytest.raises(ValueError, match="on_oov"):
        add_phone_column(words_csv, out, lexicon, "ignore")


def test_prepare_pr_reads_the_fixture_and_names_what_is_missing(librispeech, tmp_path):
    data_folder, lexicon_file = librispeech["data_folder"], librispeech["lexicon_file"]
    splits = {"train": "train-clean-100", "valid": "dev-clean", "test": "test-clean"}
    csv_files = {key: str(tmp_path / "save" / f"{key}.csv") for key in splits}
    # the fixture's lexicon lacks FALLBACK_WORDS: an error naming one of them and the file
    with pytest.raises(KeyError, match=f"({'|'.join(FALLBACK_WORDS)}).*{re.escape(lexicon_file)}"):
        prep.prepare_librispeech_pr(data_folder, str(tmp_path / "save"), splits, csv_files, [lexicon_file])
    before = folder_snapshot(os.path.dirname(data_folder))
    prep.prepare_librispeech_pr(
        data_folder, str(tmp_path / "save"), splits, csv_files, [lexicon_file], lexicon_fallback="cmudict"
    )
    assert folder_snapshot(os.path.dirname(data_folder)) == before
    train = read_csv(csv_files["train"])
    assert len(train) == 30 and list(train[0]) == [
        "ID",
        "duration",
        "wav",
        "start",
        "stop",
        "spk_id",
        "words",
        "phones",
    ]
    assert len(read_csv(csv_files["valid"])) == 8 and len(read_csv(csv_files["test"])) == 8
    first_lines = cmudict_lexicon()  # the fixture's file holds cmudict's first pronunciation first
    for row in train:
        assert row["ID"].startswith(row["spk_id"] + "-") and os.path.isfile(row["wav"])
        assert row["words"] == row["words"].upper()
        expected = [phone for word in row["words"].split() for phone in first_lines[word]]
        assert row["phones"].split() == expected  # the wrong second lines never win; fallback words filled
    words = {word for row in train for word in row["words"].split()}
    assert words & set(FALLBACK_WORDS) and words & set(WRONG_SECOND_PRONUNCIATIONS)
    # skip_utterance without the fallback leaves out the utterances with a fallback word
    csv_skip = {key: str(tmp_path / "skip" / f"{key}.csv") for key in splits}
    prep.prepare_librispeech_pr(
        data_folder, str(tmp_path / "skip"), splits, csv_skip, [lexicon_file], on_oov="skip_utterance"
    )
    kept = read_csv(csv_skip["train"])
    assert 0 < len(kept) < 30 and not any(set(row["words"].split()) & set(FALLBACK_WORDS) for row in kept)


def test_prepare_errors_name_the_path_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*LibriSpeech/<subset>/<spk>/<chapter>"):
        prepare_librispeech_splits(str(tmp_path / "nowhere"), {"dev-clean": str(tmp_path / "s" / "d.csv")})
    root = tmp_path / "LibriSpeech"
    os.makedirs(root / "train-clean-100")
    with pytest.raises(FileNotFoundError, match=r"dev-clean.*LibriSpeech/<subset>"):
        prepare_librispeech_splits(str(root), {"dev-clean": str(tmp_path / "s" / "d.csv")})
    # .flac files without their trans.txt: nothing usable, the message says what is expected
    import numpy as np
    import soundfile

    folder = root / "dev-clean" / "12" / "34"
    os.makedirs(folder)
    soundfile.write(str(folder / "12-34-0000.flac"), np.zeros(8000), 16000)
    with pytest.raises(ValueError, match=r"No usable utterance.*trans.txt"):
        prepare_librispeech_splits(str(root), {"dev-clean": str(tmp_path / "s" / "d.csv")})
    with pytest.raises(ValueError, match="needs a lexicon"):
        prep.prepare_librispeech_pr(
            str(root), str(tmp_path / "s"), {"valid": "dev-clean"}, {"valid": str(tmp_path / "s" / "v.csv")}, []
        )


# ---------------------------------------------------------------------------- the recipe ---


def test_pr_learns_and_reports_every_condition(librispeech, tiny_teacher_folder, mini_corpus, tmp_path):
    output = str(tmp_path / "pr")
    before = folder_snapshot(os.path.dirname(librispeech["data_folder"]))
    overrides = {
        "data_folder": librispeech["data_folder"],
        "lexicon_files": [librispeech["lexicon_file"]],
        "lexicon_fallback": "cmudict",
        "upstream_source": tiny_teacher_folder,
        "output_folder": output,
        "valid_split": "train-clean-100",  # dev = the training utterances: PER on the training set
        "lr": 0.01,
        "number_of_epochs": 15,
        "grad_accumulation_factor": 1,
        "evaluate_untrained": True,
        "train_dataloader_opts": {"batch_size": 4, "shuffle": True, "num_workers": 0},
        "valid_dataloader_opts": {"batch_size": 10, "num_workers": 0},
        "test_condition_names": ["clean", "snr5", "reverb"],
        **corruption_overrides(mini_corpus),
    }
    code, log = run_recipe_script("LibriSpeech/PR", "hparams/superb_pr.yaml", overrides)
    assert code == 0, log
    assert folder_snapshot(os.path.dirname(librispeech["data_folder"])) == before
    epochs = [
        {key: float(value) for key, value in re.findall(r"(train loss|valid PER): ([\d.e+-]+)", line)}
        for line in Path(os.path.join(output, "train_log.txt")).read_text().splitlines(keepends=True)
        if line.startswith("epoch")
    ]
    assert len(epochs) == 15
    results = json.loads(Path(os.path.join(output, "results.json")).read_text())
    untrained, best = results["untrained_valid"], min(epochs, key=lambda stats: stats["valid PER"])
    print(
        "PR training-set PER untrained / epoch 1 / best:",
        untrained["PER"],
        epochs[0]["valid PER"],
        best["valid PER"],
        "loss untrained / last epoch:",
        untrained["loss"],
        epochs[-1]["train loss"],
    )
    # untrained: ~100 % of the phones wrong; the best training-set PER is far below
    assert untrained["PER"] > 90 and best["valid PER"] < 60 and best["valid PER"] < untrained["PER"] - 30
    assert epochs[-1]["train loss"] < 0.5 * untrained["loss"]
    assert results["task"].startswith("PR") and set(results["results"]) == {"clean", "snr5", "reverb"}
    assert len(results["vocabulary"]) == 74 and results["vocabulary"][0] == "<pad>"
    assert results["ctc_decoding"] == "standard"
    for name, stats in [*results["results"].items(), ("untrained", untrained)]:
        assert stats["PER"] >= 0 and stats["loss"] > 0
        lines = Path(os.path.join(output, "hypotheses", f"{name}.txt")).read_text().splitlines()
        assert len(lines) == (30 if name == "untrained" else 8)
        # hypotheses keep <unk>, SIL and SPN as s3prl's do (they count as errors)
        assert all(re.match(r"^\d+-\d+-\d{4}\tREF: [A-Z0-9 ]+\tHYP: (?:[A-Z0-9 ]|<unk>)*$", line) for line in lines)
    assert "| reverb |" in Path(os.path.join(output, "results.md")).read_text()
