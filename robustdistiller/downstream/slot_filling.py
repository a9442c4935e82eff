"""Slot filling (SF, SUPERB on Audio-SNIPS): targets with slot tokens and s3prl's metrics.

The SUPERB SF task is character CTC whose vocabulary also holds a ``B-<slot>`` and an ``E-<slot>``
token per slot type (s3prl ``CharacterTextSlotEncoder``, ``downstream/ctc/text.py``); the metrics
parse the slots back out of the decoded text (s3prl ``downstream/ctc/metric.py``). Everything here
follows s3prl exactly, quirks included, so the numbers are comparable with SUPERB:

* :class:`SlotTextEncoder`: ``<pad>`` (= CTC blank) 0, ``<eos>`` 1, ``<unk>`` 2, then s3prl's 28
  characters (space, A-Z, ``'``), then ``B-x`` / ``E-x`` for every slot type of ``slots.txt`` (whose
  first line, ``O``, is skipped): 31 + 2 x 39 = 109 outputs on the real corpus.
  :meth:`~SlotTextEncoder.encode` maps a word sequence and its per-word slot names to token ids;
  :meth:`~SlotTextEncoder.decode` maps ids to text where a slot token reads ``"B-x "`` / ``" E-x"``.
* greedy decoding is :func:`~robustdistiller.downstream.ctc.greedy_ctc_decode`, shared with PR and
  ASR: by default s3prl 0.4.18's (arg-max, repeats merged, *then* ``<pad>`` and ``<eos>`` dropped;
  ``<unk>`` stays); the rule s3prl used before 2022 (drop first, then merge) is the option
  ``ctc_decoding: s3prl_pre2022``.
* :func:`ctc_vocabulary`, :func:`tokens_to_text`: the glue to
  :class:`~robustdistiller.downstream.ctc.CTCBrain`; :class:`AdaptiveTimeMask`: s3prl's SF time masks.
* :func:`parse_slots`, :func:`slot_type_f1`, :func:`slot_value_cer`, :func:`slot_value_wer`,
  :func:`slot_edit_f1`, :func:`cer`, :func:`wer` and :func:`slot_filling_metrics` (all of them at
  once, as fractions; SUPERB reports slot-type F1 and slot-value CER x 100).

Labels of the release (``all.iob.snips.txt``) are read by :func:`parse_iob_line`.
"""

import logging
import re

import torch
from speechbrain.utils.edit_distance import count_ops, op_table

from robustdistiller.downstream.ctc import TokenVocabulary

logger = logging.getLogger(__name__)

PAD_INDEX, EOS_INDEX, UNK_INDEX = 0, 1, 2
SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")
# s3prl downstream/ctc/vocab/character.txt, in its order
CHARACTERS = (" ",) + tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + ("'",)
# s3prl skips a word when ``word in "?!.,;-"`` (a substring test: "" and e.g. "?!" are skipped too)
SKIPPED_WORDS = "?!.,;-"
OUTSIDE_TAG = "O"

_SLOT_PATTERN = re.compile(r"B\-(\S+) (.+?) E\-\1")


def read_slot_types(slots_file):
    """The slot types of a SNIPS ``slots.txt``: every non-empty line after the first (``O``).

    Raises
    ------
    FileNotFoundError
        The file is missing (the message names it and the expected content).
    ValueError
        Its first line is not ``O``.
    """
    try:
        with open(slots_file, encoding="utf-8") as fin:
            lines = [line.strip() for line in fin.read().split("\n")]
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"Slot list '{slots_file}' not found: expected SNIPS/slots.txt, one slot name per line, the "
            f"first line 'O' (the release's slots.txt, next to all.iob.snips.txt)."
        ) from error
    if not lines or lines[0] != OUTSIDE_TAG:
        raise ValueError(f"'{slots_file}': the first line must be 'O' (then one slot name per line), got {lines[:1]}.")
    return [line for line in lines[1:] if line]


def parse_iob_line(line, source="all.iob.snips.txt"):
    """One line of ``all.iob.snips.txt``: ``<id> BOS W1 .. Wn EOS<TAB>O T1 .. Tn <Intent>``.

    Returns
    -------
    tuple
        ``(utterance id, words, tags, intent)``; ``tags[i]`` is the slot name of ``words[i]`` or ``O``.

    Raises
    ------
    ValueError
        The line does not have that layout (the message names ``source``).

    Example
    -------
    >>> parse_iob_line("Ivy-snips-train-0 BOS PLAY ABBA EOS\\tO O artist PlayMusic")
    ('Ivy-snips-train-0', ['PLAY', 'ABBA'], ['O', 'artist'], 'PlayMusic')
    """
    text = line.strip("\r\n ")
    if "\t" not in text:
        raise ValueError(f"{source}: expected '<id> BOS <WORDS> EOS<TAB>O <TAGS> <Intent>', got {line!r}")
    sentence, labels = text.split("\t", 1)
    fields, tags = sentence.split(" "), labels.split(" ")
    if len(fields) < 3 or fields[1] != "BOS" or fields[-1] != "EOS" or len(tags) != len(fields) - 1:
        raise ValueError(
            f"{source}: expected '<id> BOS <WORDS> EOS<TAB>O <TAGS> <Intent>' with one tag per word, got {line!r}"
        )
    return fields[0], fields[2:-1], tags[1:-1], tags[-1]


class SlotTextEncoder:
    """s3prl's ``CharacterTextSlotEncoder``: characters plus ``B-``/``E-`` tokens of every slot type.

    Arguments
    ---------
    slot_types : list of str
        Slot names (``slots.txt`` without its first line ``O``), in file order.

    Example
    -------
    >>> encoder = SlotTextEncoder(["artist", "city"])
    >>> encoder.vocab_size
    35
    >>> ids = encoder.encode(["PLAY", "ABBA", "IN", "NEW", "YORK"], ["O", "artist", "O", "city", "city"])
    >>> encoder.decode(ids)
    'PLAY B-artist ABBA E-artist IN B-city NEW YORK E-city'
    >>> ids[-1] == EOS_INDEX
    True
    """

    def __init__(self, slot_types):
        self.slot_types = list(slot_types)
        self.tokens = list(SPECIAL_TOKENS) + list(CHARACTERS)
        for slot in self.slot_types:
            self.tokens += [f"B-{slot}", f"E-{slot}"]
        self.token_to_index = {token: index for index, token in enumerate(self.tokens)}
        self.first_slot_index = len(SPECIAL_TOKENS) + len(CHARACTERS)

    @classmethod
    def from_slots_file(cls, slots_file):
        """The encoder of a SNIPS ``slots.txt`` (see :func:`read_slot_types`)."""
        return cls(read_slot_types(slots_file))

    @property
    def vocab_size(self):
        """Output classes of the CTC head (blank included)."""
        return len(self.tokens)

    def _character_index(self, character):
        return self.token_to_index.get(character, UNK_INDEX) if character in CHARACTERS else UNK_INDEX

    def encode(self, words, tags):
        """Token ids of a sentence, exactly as s3prl encodes it.

        For each word (words ``in "?!.,;-"`` skipped, ``&`` read ``AND``): ``B-tag`` if the tag is not
        ``O`` and differs from the previous word's, the word's characters, ``E-tag`` if the tag is not
        ``O`` and differs from the next word's, then a space, or ``<eos>`` after the last word
        (neighbours are the *unskipped* neighbours in the line, as in s3prl).

        Raises
        ------
        KeyError
            A tag that is not a slot type of ``slots.txt``.
        """
        ids = []
        last = len(words) - 1
        for index, (word, tag) in enumerate(zip(words, tags)):
            if word in SKIPPED_WORDS:
                continue
            if word == "&":
                word = "AND"
            if tag != OUTSIDE_TAG and (index == 0 or tags[index - 1] != tag):
                ids.append(self._slot_index("B", tag))
            ids += [self._character_index(character) for character in word]
            if tag != OUTSIDE_TAG and (index == last or tags[index + 1] != tag):
                ids.append(self._slot_index("E", tag))
            ids.append(EOS_INDEX if index == last else self.token_to_index[" "])
        return ids

    def _slot_index(self, prefix, tag):
        try:
            return self.token_to_index[f"{prefix}-{tag}"]
        except KeyError:
            raise KeyError(f"Slot '{tag}' is not in slots.txt ({len(self.slot_types)} slot types)") from None

    def decode(self, ids):
        """Text of token ids: ``<pad>`` skipped, stops at ``<eos>``, slots read ``"B-x "`` / ``" E-x"``."""
        pieces = []
        for index in ids:
            index = int(index)
            if index == PAD_INDEX:
                continue
            if index == EOS_INDEX:
                break
            token = self.tokens[index]
            if index >= self.first_slot_index:
                token = token + " " if token.startswith("B-") else " " + token
            pieces.append(token)
        return "".join(pieces)


# ------------------------------------------------------------------------------------ metrics ---


def edit_distance(reference, hypothesis):
    """Levenshtein distance between two sequences (SpeechBrain's ``edit_distance``).

    Example
    -------
    >>> edit_distance("KITTEN", "SITTING"), edit_distance("", "AB"), edit_distance("AB", "")
    (3, 2, 2)
    """
    if not reference or not hypothesis:
        return max(len(reference), len(hypothesis))
    ops = count_ops(op_table(list(reference), list(hypothesis)))
    return ops["insertions"] + ops["deletions"] + ops["substitutions"]


def cer(hypotheses, references):
    """Corpus character error rate: sum of edits / sum of reference lengths (s3prl ``cer``).

    Example
    -------
    >>> cer(["ABD", "X"], ["ABC", "XY"])
    0.4
    """
    errors = sum(edit_distance(reference, hypothesis) for hypothesis, reference in zip(hypotheses, references))
    return errors / sum(len(reference) for reference in references)


def wer(hypotheses, references):
    """Corpus word error rate, words split on single spaces (s3prl ``wer``).

    Example
    -------
    >>> wer(["PLAY ABBA"], ["PLAY SOME ABBA"])
    0.3333333333333333
    """
    errors = sum(
        edit_distance(reference.split(" "), hypothesis.split(" "))
        for hypothesis, reference in zip(hypotheses, references)
    )
    return errors / sum(len(reference.split(" ")) for reference in references)


def remove_slot_tokens(text):
    """The text without its ``B-x `` / `` E-x`` tokens (s3prl ``clean``).

    Example
    -------
    >>> remove_slot_tokens("PLAY B-artist ABBA E-artist")
    'PLAY ABBA'
    """
    text = re.sub(r"B\-(\S+) ", "", text)
    return re.sub(r" E\-(\S+)", "", text)


def parse_slots(text, clean_values=False):
    """``slot type -> [values]`` of a decoded text, by s3prl's rule.

    Runs of spaces are collapsed, then every non-overlapping ``B-x <value> E-x`` (shortest value, the
    same ``x`` at both ends) is a slot; tokens of other slots inside a value (nesting) stay in the
    value unless ``clean_values`` (s3prl cleans hypothesis values only).

    Example
    -------
    >>> parse_slots("PLAY B-artist ABBA E-artist IN B-city ROME E-city")
    {'artist': ['ABBA'], 'city': ['ROME']}
    >>> parse_slots("B-city NEW B-state YORK E-state E-city", clean_values=True)
    {'city': ['NEW YORK']}
    >>> parse_slots("B-city ROME E-state")
    {}
    """
    slots = {}
    for slot_type, value in _SLOT_PATTERN.findall(re.sub(r" +", " ", text)):
        slots.setdefault(slot_type, []).append(remove_slot_tokens(value) if clean_values else value)
    return slots


def _slot_pairs(hypotheses, references):
    """Per utterance: (hypothesis slots, reference slots), parsed as s3prl does."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    return [
        (parse_slots(hypothesis, clean_values=True), parse_slots(reference))
        for hypothesis, reference in zip(hypotheses, references)
    ]


def slot_type_f1(hypotheses, references):
    """s3prl's slot-type F1 (a fraction): the mean over utterances of the set F1 of slot types.

    Per utterance: no slot in either -> 1; slots in exactly one -> 0; otherwise precision and recall
    of the *sets* of types (how often a type occurs does not matter), F1 = 2PR / (P + R) (0 when both
    are 0).

    Example
    -------
    >>> slot_type_f1(["PLAY", "B-city ROME E-city"], ["PLAY", "B-city ROME E-city B-state LAZIO E-state"])
    0.8333333333333333
    """
    scores = []
    for hypothesis, reference in _slot_pairs(hypotheses, references):
        if not hypothesis and not reference:
            scores.append(1.0)
        elif not hypothesis or not reference:
            scores.append(0.0)
        else:
            recall = sum(slot in hypothesis for slot in reference) / len(reference)
            precision = sum(slot in reference for slot in hypothesis) / len(hypothesis)
            scores.append(2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0)
    return sum(scores) / len(scores)


def _value_pairs(hypotheses, references, error_rate):
    """(hypothesis value, reference value) for every reference slot: the hypothesis value of the same
    type with the lowest ``error_rate`` (the first of equals; ``""`` when the type is missing or no value
    scores below s3prl's start of 100)."""
    hypothesis_values, reference_values = [], []
    for hypothesis, reference in _slot_pairs(hypotheses, references):
        for slot_type, values in reference.items():
            for value in values:
                best, best_rate = "", 100
                for candidate in hypothesis.get(slot_type, ()):
                    rate = error_rate([candidate], [value])
                    if rate < best_rate:
                        best, best_rate = candidate, rate
                hypothesis_values.append(best)
                reference_values.append(value)
    return hypothesis_values, reference_values


def slot_value_cer(hypotheses, references):
    """s3prl's slot-value CER (a fraction): every reference slot value against the closest hypothesis
    value of its type (``""`` when the type is missing); corpus CER over those pairs, spaces counted.

    Example
    -------
    >>> slot_value_cer(["B-city ROMA E-city"], ["B-city ROME E-city B-state LAZIO E-state"])
    0.6666666666666666
    """
    hypothesis_values, reference_values = _value_pairs(hypotheses, references, cer)
    if not reference_values:
        raise ValueError("slot_value_cer: the references hold no slot (s3prl divides by zero here)")
    return cer(hypothesis_values, reference_values)


def slot_value_wer(hypotheses, references):
    """As :func:`slot_value_cer` with word error rates (s3prl ``slot_value_wer``)."""
    hypothesis_values, reference_values = _value_pairs(hypotheses, references, wer)
    if not reference_values:
        raise ValueError("slot_value_wer: the references hold no slot (s3prl divides by zero here)")
    return wer(hypothesis_values, reference_values)


def slot_edit_f1(hypotheses, references, loop_over_all_slots=True):
    """s3prl's slot edit F1, as a *percentage* (as s3prl returns it).

    Per reference slot value: a true positive when some hypothesis value of its type is identical,
    else a false negative (and a false positive when the type is in the hypothesis). With
    ``loop_over_all_slots`` (s3prl ``slot_edit_f1_full``), every value of a hypothesis type absent
    from the reference is a false positive too (``slot_edit_f1_part``: not counted).
    F1 = 2 TP / (2 TP + FP + FN) x 100.

    Example
    -------
    >>> slot_edit_f1(["B-city ROME E-city B-state LAZIO E-state"], ["B-city ROME E-city"])
    66.66666666666667
    >>> slot_edit_f1(["B-city ROME E-city B-state LAZIO E-state"], ["B-city ROME E-city"], False)
    100.0
    """
    true_positives = false_negatives = false_positives = 0
    for hypothesis, reference in _slot_pairs(hypotheses, references):
        for slot_type, values in reference.items():
            for value in values:
                if slot_type not in hypothesis:
                    false_negatives += 1
                elif value in hypothesis[slot_type]:
                    true_positives += 1
                else:
                    false_negatives += 1
                    false_positives += 1
        if loop_over_all_slots:
            false_positives += sum(
                len(values) for slot_type, values in hypothesis.items() if slot_type not in reference
            )
    denominator = 2 * true_positives + false_positives + false_negatives
    if denominator == 0:
        raise ValueError("slot_edit_f1: no slot in the references or hypotheses (s3prl divides by zero here)")
    return 100.0 * 2 * true_positives / denominator


def slot_filling_metrics(hypotheses, references):
    """Every s3prl SF metric of a corpus (``snips.yaml``'s list; the first one selects checkpoints).

    ``slot_type_f1``, ``slot_value_cer``, ``slot_value_wer``, ``wer``, ``cer`` are fractions;
    ``slot_edit_f1_full`` / ``_part`` percentages, as in s3prl. ``wer`` / ``cer`` compare the full
    decoded texts *with* their slot tokens (s3prl passes them so). Metrics that s3prl could not compute
    (no reference slot at all) are None.

    Example
    -------
    >>> metrics = slot_filling_metrics(["PLAY B-artist ABBA E-artist"], ["PLAY B-artist ABBA E-artist"])
    >>> metrics["slot_type_f1"], metrics["slot_value_cer"], metrics["cer"]
    (1.0, 0.0, 0.0)
    """
    metrics = {"slot_type_f1": slot_type_f1(hypotheses, references)}
    for name, function in (
        ("slot_value_cer", slot_value_cer),
        ("slot_value_wer", slot_value_wer),
        ("slot_edit_f1_full", lambda h, r: slot_edit_f1(h, r, True)),
        ("slot_edit_f1_part", lambda h, r: slot_edit_f1(h, r, False)),
    ):
        try:
            metrics[name] = function(hypotheses, references)
        except ValueError:
            metrics[name] = None
    metrics["wer"] = wer(hypotheses, references)
    metrics["cer"] = cer(hypotheses, references)
    return metrics


# ------------------------------------------------------------------------ CTC glue and SpecAugment ---


def ctc_vocabulary(encoder):
    """The :class:`~robustdistiller.downstream.ctc.TokenVocabulary` of an encoder's outputs.

    Decoding drops the blank (``<pad>``) and ``<eos>`` only: ``<unk>`` stays, as in s3prl.

    Example
    -------
    >>> vocabulary = ctc_vocabulary(SlotTextEncoder(["city"]))
    >>> len(vocabulary), vocabulary.dropped_indices, vocabulary.tokens[-2:]
    (33, [0, 1], ['B-city', 'E-city'])
    """
    return TokenVocabulary(encoder.tokens, blank_index=PAD_INDEX, special_tokens=[SPECIAL_TOKENS[EOS_INDEX]])


def tokens_to_text(tokens):
    """Decoded token strings -> text, a slot token read ``"B-x "`` / ``" E-x"`` (s3prl's decode).

    Example
    -------
    >>> tokens_to_text(["P", "L", "A", "Y", " ", "B-artist", "A", "B", "B", "A", "E-artist"])
    'PLAY B-artist ABBA E-artist'
    """
    pieces = []
    for token in tokens:
        if token.startswith("B-"):
            token = token + " "
        elif token.startswith("E-"):
            token = " " + token
        pieces.append(token)
    return "".join(pieces)


class AdaptiveTimeMask(torch.nn.Module):
    """s3prl's time masks of ``snips.yaml`` (``adaptive: true``), zero-filled, on ``[B, F, D]`` features.

    With ``F`` frames in the (padded) batch: ``min(int(number_ratio * F), max_masks)`` masks per
    utterance, each of a width drawn in ``[min_width, min(max_width, int(size_ratio * F)))`` at a
    position in ``[0, F - widest)``. s3prl's ``MaskAlongAxis`` reads ``dim == 1 & adaptive``, which
    Python parses ``dim == (1 & adaptive)``: with ``adaptive: true`` the adaptive rule is in force on
    the time axis (so ``num_time_mask: 2`` of the YAML is not used). No mask when ``F`` is too short
    for one.

    Example
    -------
    >>> features = torch.ones(2, 100, 3)
    >>> masked = AdaptiveTimeMask()(features)
    >>> masked.shape, bool((masked == 0).any()), bool((features == 1).all())
    (torch.Size([2, 100, 3]), True, True)
    """

    def __init__(self, max_width=40, min_width=0, number_ratio=0.04, size_ratio=0.04, max_masks=20):
        super().__init__()
        self.max_width, self.min_width = int(max_width), int(min_width)
        self.number_ratio, self.size_ratio, self.max_masks = float(number_ratio), float(size_ratio), int(max_masks)

    def forward(self, features):
        """Returns a masked copy of ``features``."""
        batch, frames = features.shape[:2]
        count = min(int(self.number_ratio * frames), self.max_masks)
        high = min(self.max_width, int(self.size_ratio * frames))
        if count < 1 or high <= self.min_width:
            return features
        widths = torch.randint(self.min_width, high, (batch, count, 1), device=features.device)
        positions = torch.randint(0, max(1, frames - int(widths.max())), (batch, count, 1), device=features.device)
        frame_index = torch.arange(frames, device=features.device).view(1, 1, -1)
        mask = ((positions <= frame_index) & (frame_index < positions + widths)).any(dim=1)
        return features.masked_fill(mask.unsqueeze(2), 0.0)
