"""SF targets and metrics (robustdistiller.downstream.slot_filling) against s3prl's definitions, on
hand-written references and hypotheses: every corner case of s3prl's downstream/ctc/metric.py and
text.py (empty/empty, one side empty, missing types, multiplicity, nested tags, unclosed tags,
punctuation words, '&', s3prl's greedy decoding: 0.4.18's and the pre-2022 rule)."""

import pytest
import torch

from robustdistiller.downstream.ctc import greedy_ctc_decode

from robustdistiller.downstream.slot_filling import (
    AdaptiveTimeMask,
    EOS_INDEX,
    SlotTextEncoder,
    cer,
    ctc_vocabulary,
    parse_iob_line,
    parse_slots,
    read_slot_types,
    slot_edit_f1,
    slot_filling_metrics,
    slot_type_f1,
    slot_value_cer,
    slot_value_wer,
    tokens_to_text,
    wer,
)

# --------------------------------------------------------------------------- target encoding ---


def test_vocabulary_is_s3prls_character_slot_encoder(tmp_path):
    slots = ["O"] + [f"slot{index}" for index in range(39)]
    path = tmp_path / "slots.txt"
    path.write_text("\n".join(slots) + "\n")  # a trailing newline adds no slot
    encoder = SlotTextEncoder.from_slots_file(str(path))
    assert encoder.vocab_size == 109  # 3 specials + 28 characters + 2 x 39
    assert encoder.tokens[:5] == ["<pad>", "<eos>", "<unk>", " ", "A"] and encoder.tokens[30] == "'"
    assert encoder.tokens[31:35] == ["B-slot0", "E-slot0", "B-slot1", "E-slot1"]
    vocabulary = ctc_vocabulary(encoder)
    assert len(vocabulary) == 109 and vocabulary.blank_index == 0 and vocabulary.dropped_indices == [0, 1]


def test_slots_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.txt.*first line 'O'"):
        read_slot_types(str(tmp_path / "nowhere.txt"))
    bad = tmp_path / "slots.txt"
    bad.write_text("city\nartist\n")
    with pytest.raises(ValueError, match="slots.txt.*first line must be 'O'"):
        read_slot_types(str(bad))


def test_encode_spans_punctuation_ampersand_and_eos():
    encoder = SlotTextEncoder(["artist", "city", "state"])
    _, words, tags, intent = parse_iob_line(
        "Ivy-snips-train-7 BOS PLAY SIMON & GARFUNKEL IN NEW YORK NEW YORK EOS\t"
        "O O artist artist artist O city city state state PlayMusic"
    )
    assert intent == "PlayMusic"
    ids = encoder.encode(words, tags)
    assert (
        encoder.decode(ids) == "PLAY B-artist SIMON AND GARFUNKEL E-artist IN B-city NEW YORK E-city "
        "B-state NEW YORK E-state"
    )
    assert ids[-1] == EOS_INDEX and ids.count(EOS_INDEX) == 1
    # punctuation words are dropped with their space; neighbours are the line's neighbours (s3prl)
    ids = encoder.encode(["WHERE", "IS", "ROME", "?"], ["O", "O", "city", "O"])
    assert encoder.decode(ids) == "WHERE IS B-city ROME E-city "
    assert EOS_INDEX not in ids  # the last word was skipped, so s3prl emits no <eos>
    # unknown characters -> <unk>; a tag outside slots.txt is an error naming it
    assert encoder.encode(["NO."], ["O"]) == [encoder.token_to_index["N"], encoder.token_to_index["O"], 2, EOS_INDEX]
    with pytest.raises(KeyError, match="'country' is not in slots.txt"):
        encoder.encode(["FRANCE"], ["country"])


def test_iob_line_errors_name_the_source():
    with pytest.raises(ValueError, match="all.iob.snips.txt, line 3"):
        parse_iob_line("Ivy-snips-train-0 BOS PLAY ABBA EOS O O artist PlayMusic", "all.iob.snips.txt, line 3")
    with pytest.raises(ValueError, match="one tag per word"):
        parse_iob_line("Ivy-snips-train-0 BOS PLAY ABBA EOS\tO artist PlayMusic")


def one_hot(frame_ids, vocab_size):
    """Logits ``[1, F, V]`` whose arg-max per frame is ``frame_ids``."""
    logits = torch.full((1, len(frame_ids), vocab_size), -5.0)
    logits[0, torch.arange(len(frame_ids)), torch.tensor(frame_ids)] = 5.0
    return logits


def test_greedy_decoding_is_s3prl_0_4_18_by_default_with_the_pre_2022_rule_as_an_option():
    encoder = SlotTextEncoder(["city"])
    vocabulary = ctc_vocabulary(encoder)
    ids = lambda text: [vocabulary.index[token] for token in text.split(" ")]  # noqa: E731
    frames = ids("<pad> H E L <pad> L O <eos> <pad>")
    logits = one_hot(frames, len(vocabulary))

    def decode(rule):
        (decoded,) = greedy_ctc_decode(logits, dropped_indices=vocabulary.dropped_indices, rule=rule)
        return tokens_to_text(vocabulary.decode(decoded))

    # s3prl 0.4.18 (downstream/ctc/expert.py): unique_consecutive, then <pad> and <eos> filtered
    assert decode("standard") == "HELLO"
    # s3prl before its 2022 "fix ctc decode": <pad>/<eos> filtered, then repeats merged
    assert decode("s3prl_pre2022") == "HELO"
    # the SF Brain's default is the standard rule (no ctc_decoding in the hparams)
    assert greedy_ctc_decode(logits, dropped_indices=vocabulary.dropped_indices) == [ids("H E L L O")]
    # <eos> between two equal tokens: the standard rule merges repeats before dropping <eos>, both M stay
    frames = ids("B-city R O M <eos> M E E-city")
    assert tokens_to_text(
        vocabulary.decode(
            greedy_ctc_decode(one_hot(frames, len(vocabulary)), dropped_indices=vocabulary.dropped_indices)[0]
        )
    ) == ("B-city ROMME E-city")
    # <unk> stays in the hypothesis, as in s3prl
    assert vocabulary.decode(
        greedy_ctc_decode(one_hot(ids("<unk> A"), len(vocabulary)), dropped_indices=vocabulary.dropped_indices)[0]
    ) == ["<unk>", "A"]
    assert tokens_to_text(["B-city", "R", "O", "M", "E", "E-city"]) == "B-city ROME E-city"


def test_adaptive_time_masks_follow_snips_yaml():
    torch.manual_seed(0)
    features = torch.ones(3, 500, 2)
    masked = AdaptiveTimeMask()(features)
    zero_frames = (masked[..., 0] == 0).sum(dim=1)
    # 500 frames: min(0.04 * 500, 20) = 20 masks of width < min(40, 20)
    assert int(zero_frames.max()) <= 20 * 19 and int(zero_frames.min()) > 0
    assert torch.equal(AdaptiveTimeMask()(torch.ones(1, 20, 2)), torch.ones(1, 20, 2))  # too short: none


# ---------------------------------------------------------------------------------- parsing ---


def test_parse_slots_regex_nesting_and_unclosed_tags():
    assert parse_slots("") == {}
    assert parse_slots("PLAY  B-artist  ABBA   E-artist") == {"artist": ["ABBA"]}  # spaces collapsed
    assert parse_slots("B-city ROME E-city AND B-city PARIS E-city") == {"city": ["ROME", "PARIS"]}
    assert parse_slots("B-city ROME E-state") == {}  # an E- of another type closes nothing
    assert parse_slots("B-city ROME") == {}
    # nested tags: the outer span is found; only hypothesis values are cleaned (s3prl)
    nested = "B-city NEW B-state YORK E-state E-city"
    assert parse_slots(nested) == {"city": ["NEW B-state YORK E-state"]}
    assert parse_slots(nested, clean_values=True) == {"city": ["NEW YORK"]}


# ------------------------------------------------------------------------------- slot-type F1 ---


def test_slot_type_f1_corner_cases():
    assert slot_type_f1(["PLAY MUSIC"], ["PLAY MUSIC"]) == 1.0  # no slot on either side
    assert slot_type_f1(["WHAT"], ["B-city ROME E-city"]) == 0.0  # hypothesis empty
    assert slot_type_f1(["B-city ROME E-city"], ["WHAT"]) == 0.0  # reference empty
    assert slot_type_f1(["B-city PARIS E-city"], ["B-city ROME E-city"]) == 1.0  # types only, values ignored
    assert slot_type_f1(["B-artist ROME E-artist"], ["B-city ROME E-city"]) == 0.0  # P = R = 0
    # multiplicity ignored: sets of types
    assert slot_type_f1(["B-city A E-city B-city B E-city"], ["B-city A E-city"]) == 1.0
    # P = 1/2, R = 1 -> F1 = 2/3; averaged over utterances (not pooled)
    two_thirds = slot_type_f1(["B-city A E-city B-state B E-state"], ["B-city A E-city"])
    assert two_thirds == pytest.approx(2 / 3)
    assert slot_type_f1(["B-city A E-city B-state B E-state", "X"], ["B-city A E-city", "X"]) == pytest.approx(
        (2 / 3 + 1) / 2
    )
    # a nested hypothesis still counts its outer type only
    assert slot_type_f1(["B-city NEW B-state YORK E-state E-city"], ["B-city NEW YORK E-city"]) == 1.0
    with pytest.raises(ValueError, match="2 hypotheses for 1 references"):
        slot_type_f1(["A", "B"], ["A"])


# ------------------------------------------------------------------------------ slot-value CER ---


def test_slot_value_cer_corner_cases():
    assert slot_value_cer(["B-city ROME E-city"], ["B-city ROME E-city"]) == 0.0
    # missing type: compared with "" -> every character is an error
    assert slot_value_cer(["NOTHING"], ["B-city ROME E-city"]) == 1.0
    # the closest hypothesis value of the type is used; spaces are characters
    assert slot_value_cer(["B-city PARIS E-city B-city ROMA E-city"], ["B-city ROME E-city"]) == 0.25
    assert slot_value_cer(["B-city NEWYORK E-city"], ["B-city NEW YORK E-city"]) == pytest.approx(1 / 8)
    # corpus-level: sum of edits / sum of reference value lengths (4 + 5 characters)
    assert slot_value_cer(["B-city ROMA E-city"], ["B-city ROME E-city B-state LAZIO E-state"]) == pytest.approx(6 / 9)
    # hypothesis slots of types absent from the reference cost nothing
    assert slot_value_cer(["B-city ROME E-city B-state X E-state"], ["B-city ROME E-city"]) == 0.0
    # the nested hypothesis value is cleaned before scoring
    assert slot_value_cer(["B-city NEW B-state YORK E-state E-city"], ["B-city NEW YORK E-city"]) == 0.0
    # a reference type given twice: each value finds its own best match
    assert slot_value_cer(["B-city ROME E-city"], ["B-city ROME E-city B-city PARIS E-city"]) == pytest.approx(
        5 / 9
    )  # PARIS vs ROME: 5 edits
    with pytest.raises(ValueError, match="no slot"):
        slot_value_cer(["B-city ROME E-city"], ["NOTHING"])


def test_slot_value_wer_and_edit_f1():
    assert slot_value_wer(["B-city NEW YORK E-city"], ["B-city NEW YORK E-city"]) == 0.0
    assert slot_value_wer(["B-city NEW E-city"], ["B-city NEW YORK E-city"]) == 0.5
    assert slot_value_wer(["NONE"], ["B-city NEW YORK E-city"]) == 1.0  # [""] vs 2 words: 2 edits / 2
    # exact-value F1 (percent): TP 1, a wrong value = FN + FP, an extra type = FP in the full variant only
    hypotheses = ["B-city ROME E-city B-state LAZIO E-state", "B-city PARIS E-city"]
    references = ["B-city ROME E-city", "B-city LYON E-city"]
    assert slot_edit_f1(hypotheses, references, True) == pytest.approx(100 * 2 / (2 + 2 + 1))
    assert slot_edit_f1(hypotheses, references, False) == pytest.approx(100 * 2 / (2 + 1 + 1))


def test_whole_text_error_rates_and_the_metric_set():
    assert cer(["ABD", "X"], ["ABC", "XY"]) == pytest.approx(2 / 5)
    assert wer(["PLAY ABBA"], ["PLAY SOME ABBA"]) == pytest.approx(1 / 3)
    metrics = slot_filling_metrics(["PLAY B-artist ABA E-artist", "HI"], ["PLAY B-artist ABBA E-artist", "HI"])
    assert metrics["slot_type_f1"] == 1.0
    assert metrics["slot_value_cer"] == pytest.approx(1 / 4)
    assert metrics["slot_edit_f1_full"] == 0.0
    # wer / cer compare the texts with their slot tokens, as s3prl's do
    assert metrics["wer"] == pytest.approx(1 / 5) and metrics["cer"] == pytest.approx(1 / 29)
    # no reference slot at all: the value metrics are undefined (s3prl divides by zero)
    empty = slot_filling_metrics(["HI"], ["HI"])
    assert empty["slot_type_f1"] == 1.0 and empty["slot_value_cer"] is None and empty["slot_edit_f1_full"] is None
