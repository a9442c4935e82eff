"""Frame-level sequence tasks trained with CTC (PR, ASR, SF): vocabularies, head, decoding, Brain.

* :class:`TokenVocabulary`: an ordered token list (index 0 is the CTC blank), with the two SUPERB
  vocabularies :func:`phone_vocabulary` (s3prl ``libriphone``: 74 outputs, 69 stress-marked ARPAbet
  phones) and :func:`character_vocabulary` (s3prl's ASR ``char.dict``: 32 outputs), both in s3prl
  0.4.18's output order;
* :class:`CTCHead`: ``Linear(D -> P)`` -> optional n-layer BiLSTM with dropout after every layer ->
  ``Linear -> vocabulary`` (s3prl's PR head with ``lstm_layers=0``, its ASR/SF head with 2);
* :func:`greedy_ctc_decode`: the one greedy CTC decoding of PR, ASR and SF (the ``ctc_decoding``
  option, :data:`CTC_DECODING_RULES`): ``standard`` (s3prl 0.4.18: argmax per frame, merge repeats, then
  drop the blank and the end-of-sentence token) or ``s3prl_pre2022`` (s3prl's SF rule before its 2022
  "fix ctc decode" change: drop them first, then merge repeats);
* :class:`FeatureAugment`: SpecAugment on the weighted-sum features in training, built from
  SpeechBrain's ``Warping`` / ``SpectrogramDrop`` modules listed in the YAML;
* :class:`CTCBrain`: the Brain; subclasses give the metrics (:meth:`CTCBrain.init_metrics`,
  :meth:`CTCBrain.append_metrics`, :meth:`CTCBrain.summarize_metrics`); the checkpoint selection is the
  YAML's (``selection_metric``, ``selection_mode``: one of the summarized metrics). Batches carry ``sig``
  and ``tokens`` (a ``PaddedData`` of token ids, without blank); per-utterance hypotheses of every test condition are written to
  ``<output_folder>/hypotheses/<condition>.txt``.
"""

import logging
import os

import speechbrain as sb
import torch
import torch.nn as nn

from robustdistiller.downstream.brain import DownstreamBrain
from robustdistiller.runs.options import OptionError

logger = logging.getLogger(__name__)

#: The 15 ARPAbet vowels (each takes a stress digit 0, 1 or 2) and the 24 consonants.
ARPABET_VOWELS = ("AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW")
ARPABET_CONSONANTS = (
    "B",
    "CH",
    "D",
    "DH",
    "F",
    "G",
    "HH",
    "JH",
    "K",
    "L",
    "M",
    "N",
    "NG",
    "P",
    "R",
    "S",
    "SH",
    "T",
    "TH",
    "V",
    "W",
    "Y",
    "Z",
    "ZH",
)
#: The 28 characters of s3prl 0.4.18's ``downstream/asr/char.dict``, in its order (by decreasing count
#: in the LibriSpeech training text; ``C`` precedes ``W``); ``|`` is the word boundary.
S3PRL_CHARACTERS = tuple("|ETAONIHSRDLUMCWFGYPBVK'XJQZ")


class TokenVocabulary:
    """An ordered list of output tokens of a CTC head; index ``blank_index`` is the CTC blank.

    Arguments
    ---------
    tokens : sequence of str
        Every output, in output order (specials included).
    blank_index : int
        The CTC blank (SUPERB: 0).
    special_tokens : sequence of str
        Tokens dropped from decoded sequences besides the blank (s3prl drops only the end-of-sentence
        token, e.g. ``<eos>``).
    unk_token : str, optional
        Replaces unknown tokens in :meth:`encode` (None: unknown tokens raise ``KeyError``).

    Example
    -------
    >>> vocabulary = TokenVocabulary(["<blank>", "<eos>", "a", "b"], special_tokens=["<eos>"])
    >>> len(vocabulary), vocabulary.encode(["a", "b", "a"])
    (4, [2, 3, 2])
    >>> vocabulary.decode([2, 1, 3])
    ['a', 'b']
    >>> vocabulary.dropped_indices
    [0, 1]
    """

    def __init__(self, tokens, blank_index=0, special_tokens=(), unk_token=None):
        self.tokens = list(tokens)
        self.index = {token: position for position, token in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise ValueError(f"TokenVocabulary: duplicate tokens in {self.tokens}")
        self.blank_index = int(blank_index)
        missing = [token for token in special_tokens if token not in self.index]
        if missing:
            raise ValueError(f"TokenVocabulary: special tokens {missing} are not in the vocabulary")
        self.special_tokens = list(special_tokens)
        self.unk_token = unk_token

    def __len__(self):
        return len(self.tokens)

    @property
    def dropped_indices(self):
        """Indices removed from decoded sequences: the blank and the special tokens."""
        return sorted({self.blank_index, *(self.index[token] for token in self.special_tokens)})

    def encode(self, tokens):
        """Token strings -> ids (unknown tokens -> ``unk_token``, or ``KeyError`` naming the token)."""
        ids = []
        for token in tokens:
            if token in self.index:
                ids.append(self.index[token])
            elif self.unk_token is not None:
                ids.append(self.index[self.unk_token])
            else:
                raise KeyError(f"Token {token!r} is not in the vocabulary ({len(self)} tokens)")
        return ids

    def decode(self, ids):
        """Ids -> token strings, without the blank and the specials."""
        dropped = set(self.dropped_indices)
        return [self.tokens[int(index)] for index in ids if int(index) not in dropped]


def stressed_arpabet_phones():
    """The 69 stress-marked ARPAbet phones (15 vowels x stresses 0/1/2, 24 consonants), sorted.

    Alphabetical order, vowels and consonants interleaved, as in s3prl 0.4.18's
    ``downstream/ctc/vocab/phoneme.txt`` after its ``SIL`` and ``SPN``.

    Example
    -------
    >>> phones = stressed_arpabet_phones()
    >>> len(phones), phones[:3], phones[18:22], phones[-1]
    (69, ['AA0', 'AA1', 'AA2'], ['B', 'CH', 'D', 'DH'], 'ZH')
    """
    return sorted([f"{vowel}{stress}" for vowel in ARPABET_VOWELS for stress in "012"] + list(ARPABET_CONSONANTS))


def read_phone_file(path):
    """Phones of a vocabulary file (one per line, e.g. s3prl's ``vocab/phoneme.txt``); specials skipped."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Phone vocabulary file '{path}' (phones_file) does not exist; expected one phone per line"
        )
    with open(path, encoding="utf-8") as fin:
        phones = [line.split()[0] for line in fin if line.strip()]
    return [phone for phone in phones if phone not in PHONE_SPECIALS]


PHONE_SPECIALS = ("<pad>", "<eos>", "<unk>", "SIL", "SPN")


def phone_vocabulary(phones=None, phones_file=None):
    """s3prl's ``libriphone`` outputs: ``<pad>`` (blank, 0), ``<eos>`` (1), ``<unk>``, ``SIL``, ``SPN``, phones.

    s3prl 0.4.18 (``downstream/ctc/text.py``) puts ``<pad>``, ``<eos>``, ``<unk>`` before the lines
    of ``vocab/phoneme.txt`` (``SIL``, ``SPN``, then the 69 stressed phones in alphabetical order):
    the default here is that exact order, so a head trained by either loads in the other.

    Arguments
    ---------
    phones : sequence of str, optional
        The phone set, in output order (default :func:`stressed_arpabet_phones`: 74 outputs). Decoding
        drops the blank and ``<eos>`` only: ``<unk>``, ``SIL`` and ``SPN`` stay in a hypothesis and count
        as errors, as in s3prl 0.4.18 (its tokenizer's ``decode`` skips ``<pad>`` and stops at ``<eos>``).
    phones_file : str, optional
        Read the phones from this file instead (:func:`read_phone_file`).

    Example
    -------
    >>> vocabulary = phone_vocabulary()
    >>> len(vocabulary), vocabulary.tokens[:5], vocabulary.blank_index
    (74, ['<pad>', '<eos>', '<unk>', 'SIL', 'SPN'], 0)
    """
    if phones_file is not None:
        phones = read_phone_file(phones_file)
    phones = list(stressed_arpabet_phones() if phones is None else phones)
    return TokenVocabulary(
        list(PHONE_SPECIALS) + phones,
        blank_index=0,
        special_tokens=["<eos>"],  # s3prl keeps <unk>, SIL and SPN in hypotheses
    )


def character_vocabulary(characters=S3PRL_CHARACTERS):
    """s3prl's ASR outputs: ``<s>`` (blank, 0), ``<pad>``, ``</s>``, ``<unk>``, then the characters.

    s3prl 0.4.18's ASR (``downstream/asr/expert.py``) loads ``char.dict`` into its copy of fairseq's
    ``Dictionary``, which first adds ``<s>`` (0, used as the CTC blank), ``<pad>`` (1), ``</s>`` (2) and
    ``<unk>`` (3), then the file's symbols in file order (:data:`S3PRL_CHARACTERS`): 32 outputs, in
    the same order here, so a head trained by either loads in the other. Decoding drops the blank and
    ``</s>`` only: ``<pad>`` and ``<unk>`` stay in a hypothesis and count as errors, as in s3prl (whose
    hypotheses go through fairseq's ``Dictionary.string``, which removes only ``<s>`` and ``</s>``).

    Example
    -------
    >>> vocabulary = character_vocabulary()
    >>> len(vocabulary), vocabulary.tokens[:5], "".join(vocabulary.tokens[4:])
    (32, ['<s>', '<pad>', '</s>', '<unk>', '|'], "|ETAONIHSRDLUMCWFGYPBVK'XJQZ")
    """
    return TokenVocabulary(
        ["<s>", "<pad>", "</s>", "<unk>"] + list(characters),
        blank_index=0,
        special_tokens=["</s>"],  # s3prl (fairseq's Dictionary.string) keeps <pad> and <unk>
        unk_token="<unk>",
    )


def words_to_characters(words, boundary="|"):
    """s3prl's ASR target characters: every word's letters followed by the boundary ``|``.

    Example
    -------
    >>> words_to_characters("HI THERE")
    ['H', 'I', '|', 'T', 'H', 'E', 'R', 'E', '|']
    """
    characters = []
    for word in words.split():
        characters.extend(word)
        characters.append(boundary)
    return characters


def characters_to_words(characters, boundary="|"):
    """Inverse of :func:`words_to_characters` (repeated or edge boundaries are ignored).

    Example
    -------
    >>> characters_to_words(['|', 'H', 'I', '|', '|', 'Y', 'O'])
    'HI YO'
    """
    return " ".join("".join(characters).replace(boundary, " ").split())


CTC_DECODING_RULES = ("standard", "s3prl_pre2022")
"""Values of the ``ctc_decoding`` option (:func:`greedy_ctc_decode`).

``standard``: argmax per frame, consecutive repeats merged, *then* the blank and the end-of-sentence
token dropped, as s3prl 0.4.18 decodes PR and SF (``downstream/ctc/expert.py``: ``unique_consecutive``,
then ``pad_idx`` and ``eos_idx`` filtered) and ASR (``downstream/asr/expert.py``). ``s3prl_pre2022``:
the blank and the end-of-sentence token dropped *first*, then repeats merged, as s3prl's CTC downstream
(PR, SF) decoded before its 2022 "fix ctc decode" change; it merges a double letter separated by a
blank (``H E L _ L O`` -> ``HELO`` instead of ``HELLO``), so it scores a model differently.
"""


def check_ctc_decoding(rule, option_name="ctc_decoding"):
    """The decoding rule, refused with a message naming the option when it is not in :data:`CTC_DECODING_RULES`.

    Example
    -------
    >>> check_ctc_decoding("standard")
    'standard'
    >>> check_ctc_decoding("s3prl")
    Traceback (most recent call last):
    ...
    robustdistiller.runs.options.OptionError: Option `ctc_decoding` must be one of ('standard', 's3prl_pre2022'), not 's3prl'
    """
    if rule not in CTC_DECODING_RULES:
        raise OptionError(f"Option `{option_name}` must be one of {CTC_DECODING_RULES}, not {rule!r}")
    return rule


def greedy_ctc_decode(log_probs, lengths=None, dropped_indices=(0,), rule="standard"):
    """Greedy CTC decoding of PR, ASR and SF: argmax per frame, then merge repeats and drop tokens.

    Arguments
    ---------
    log_probs : torch.Tensor
        ``[B, F, V]`` scores (log-probabilities or logits).
    lengths : torch.Tensor, optional
        ``[B]`` numbers of valid frames (None: all frames).
    dropped_indices : sequence of int
        The blank and the tokens s3prl removes from a hypothesis (its end-of-sentence token), e.g.
        :attr:`TokenVocabulary.dropped_indices`.
    rule : str
        ``"standard"`` (merge repeats, then drop: s3prl 0.4.18) or ``"s3prl_pre2022"`` (drop, then merge
        repeats: s3prl before 2022), see :data:`CTC_DECODING_RULES`.

    Returns
    -------
    list of list of int

    Example
    -------
    >>> scores = torch.tensor([[[0.0, 1, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]]])
    >>> greedy_ctc_decode(scores)  # frames 1 1 _ 1 2 2
    [[1, 1, 2]]
    >>> greedy_ctc_decode(scores, rule="s3prl_pre2022")
    [[1, 2]]
    >>> greedy_ctc_decode(scores, lengths=torch.tensor([3]))
    [[1]]
    """
    check_ctc_decoding(rule, "rule")
    best = log_probs.argmax(dim=-1).cpu()
    if lengths is None:
        lengths = torch.full((best.shape[0],), best.shape[1], dtype=torch.long)
    dropped = set(int(index) for index in dropped_indices)
    hypotheses = []
    for sequence, length in zip(best, lengths.cpu().tolist()):
        frames = sequence[: int(length)]
        if rule == "standard":
            hypotheses.append([index for index in torch.unique_consecutive(frames).tolist() if index not in dropped])
        else:
            kept = torch.tensor([index for index in frames.tolist() if index not in dropped], dtype=torch.long)
            hypotheses.append(torch.unique_consecutive(kept).tolist())
    return hypotheses


class CTCHead(nn.Module):
    """Projector, optional BiLSTM stack (dropout after every layer), linear output layer.

    s3prl's PR head is ``CTCHead(D, 256, V)`` (no LSTM, no activation); its ASR/SF head is
    ``CTCHead(D, 1024, V, lstm_layers=2, lstm_size=1024, dropout=0.2)``.

    Arguments
    ---------
    input_size : int
        Feature width ``D``.
    projector_size : int
        Width ``P`` of the projector ``Linear(D -> P)``.
    vocab_size : int
        Outputs (blank included).
    lstm_layers : int
        Bidirectional LSTM layers (0: none).
    lstm_size : int
        Hidden size per direction.
    dropout : float
        Dropout after every LSTM layer (s3prl; ``nn.LSTM(dropout=...)`` would skip the last layer).

    Example
    -------
    >>> head = CTCHead(8, 6, 5, lstm_layers=2, lstm_size=4)
    >>> head(torch.randn(2, 7, 8), torch.tensor([7, 3])).shape
    torch.Size([2, 7, 5])
    """

    def __init__(self, input_size, projector_size, vocab_size, lstm_layers=0, lstm_size=1024, dropout=0.2):
        super().__init__()
        self.projector = nn.Linear(input_size, projector_size)
        self.lstms = nn.ModuleList()
        width = projector_size
        for _ in range(int(lstm_layers)):
            self.lstms.append(nn.LSTM(width, lstm_size, batch_first=True, bidirectional=True))
            width = 2 * lstm_size
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(width, vocab_size)

    def forward(self, features, lengths=None):
        """``[B, F, D]`` features and ``[B]`` frame counts -> ``[B, F, V]`` logits."""
        hidden = self.projector(features)
        if self.lstms:
            if lengths is None:
                lengths = torch.full((hidden.shape[0],), hidden.shape[1], dtype=torch.long)
            lengths = lengths.detach().cpu().long().clamp(min=1)
            for lstm in self.lstms:
                packed = nn.utils.rnn.pack_padded_sequence(hidden, lengths, batch_first=True, enforce_sorted=False)
                output, _ = lstm(packed)
                hidden, _ = nn.utils.rnn.pad_packed_sequence(output, batch_first=True, total_length=features.shape[1])
                hidden = self.dropout(hidden)
        return self.output(hidden)


class FeatureAugment(nn.Module):
    """SpecAugment on ``[B, F, D]`` features: SpeechBrain augmentation modules applied in order.

    s3prl's ASR/SF setting (time warp 5; 2 time masks of 0-40 frames; 4 feature masks of 0-50,
    zero-filled) is, in the YAML (``SpectrogramDrop`` draws widths in ``[low, high)``, counts in
    ``[low, high]``; it masks in place)::

        feature_augment: !new:robustdistiller.downstream.ctc.FeatureAugment
            augmentations:
                - !new:speechbrain.augment.freq_domain.Warping {warp_window: 5, dim: 1}
                - !new:speechbrain.augment.freq_domain.SpectrogramDrop
                  {drop_length_low: 0, drop_length_high: 41, drop_count_low: 2, drop_count_high: 2, dim: 1}
                - !new:speechbrain.augment.freq_domain.SpectrogramDrop
                  {drop_length_low: 0, drop_length_high: 51, drop_count_low: 4, drop_count_high: 4, dim: 2}

    Arguments
    ---------
    augmentations : list of nn.Module
        Each maps ``[B, F, D]`` to the same shape.

    Example
    -------
    >>> from speechbrain.augment.freq_domain import SpectrogramDrop
    >>> augment = FeatureAugment([SpectrogramDrop(drop_length_low=2, drop_length_high=3, drop_count_low=1,
    ...                                           drop_count_high=1, dim=2)])
    >>> dropped = augment(torch.ones(1, 4, 6)) == 0  # whole feature dimensions, on every frame
    >>> bool(dropped.any()), bool((dropped.all(dim=1) | ~dropped.any(dim=1)).all())
    (True, True)
    """

    def __init__(self, augmentations=()):
        super().__init__()
        self.augmentations = nn.ModuleList(augmentations)

    def forward(self, features):
        """Applies every augmentation (call it in training only)."""
        for augmentation in self.augmentations:
            features = augmentation(features)
        return features


def write_hypotheses(path, hypotheses):
    """Writes ``<id><TAB>REF: ...<TAB>HYP: ...`` lines (one per utterance, sorted by id)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as fout:
        for utterance_id, reference, hypothesis in sorted(hypotheses):
            fout.write(f"{utterance_id}\tREF: {reference}\tHYP: {hypothesis}\n")


class CTCBrain(DownstreamBrain):
    """Frame-level CTC over a frozen upstream: weighted sum -> (SpecAugment in training) -> head -> CTC.

    ``modules``: ``weighted_sum`` and ``head`` (:class:`CTCHead` or any module taking
    ``(features, lengths)``). Optional ``hparams.feature_augment`` (:class:`FeatureAugment`, training
    only). The batch holds ``sig`` and ``tokens`` (``PaddedData`` of target ids). CTC loss: blank
    ``vocabulary.blank_index``, ``zero_infinity``, mean over the batch of length-normalised losses
    (``torch.nn.CTCLoss`` defaults, as s3prl). Outside training the output is decoded by
    :func:`greedy_ctc_decode` with the rule of ``hparams.ctc_decoding`` (default ``standard``).

    Subclasses implement :meth:`init_metrics`, :meth:`append_metrics` and :meth:`summarize_metrics`; they
    may override :meth:`format_tokens` (how a token sequence is written in hypothesis files). The best dev
    checkpoint is the YAML's ``selection_metric`` / ``selection_mode``
    (:attr:`~robustdistiller.downstream.brain.DownstreamBrain.best_checkpoint_key`).

    Arguments
    ---------
    vocabulary : TokenVocabulary
        The head's outputs.
    *args, **kwargs
        ``sb.Brain`` arguments.
    """

    def __init__(self, vocabulary, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.vocabulary = vocabulary
        self.ctc_decoding = check_ctc_decoding(getattr(self.hparams, "ctc_decoding", "standard"))

    # -------------------------------------------------------------- subclass hooks ---
    def init_metrics(self, stage):
        """Creates the metric accumulators of a dev/test stage (on ``self``)."""
        raise NotImplementedError

    def append_metrics(self, ids, hypotheses, references):
        """Accumulates a batch: ``hypotheses`` and ``references`` are lists of token-string lists."""
        raise NotImplementedError

    def summarize_metrics(self, stage):
        """``{name: float}`` of the stage (must contain the YAML's ``selection_metric``)."""
        raise NotImplementedError

    def format_tokens(self, tokens):
        """A token sequence as written to hypothesis files (default: space-separated)."""
        return " ".join(tokens)

    # ------------------------------------------------------------------- Brain steps ---
    def compute_forward(self, batch, stage):
        """``(log_probs [B, F, V], frame_lengths [B])``."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        features, frame_mask = self.encode(wavs, wav_lens)
        augment = getattr(self.hparams, "feature_augment", None)
        if stage == sb.Stage.TRAIN and augment is not None:
            features = augment(features)
        frame_lengths = frame_mask.sum(dim=1)
        logits = self.modules.head(features, frame_lengths)
        return torch.log_softmax(logits, dim=-1), frame_lengths

    def compute_objectives(self, predictions, batch, stage):
        """CTC loss; outside training decodes greedily and accumulates the metrics."""
        log_probs, frame_lengths = predictions
        tokens, token_lens = batch.tokens
        tokens = tokens.to(self.device).long()
        target_lengths = torch.round(token_lens.to(self.device) * tokens.shape[1]).long()
        loss = nn.functional.ctc_loss(
            log_probs.transpose(0, 1).float(),
            tokens,
            frame_lengths.long(),
            target_lengths,
            blank=self.vocabulary.blank_index,
            zero_infinity=True,
        )
        if stage != sb.Stage.TRAIN:
            decoded = greedy_ctc_decode(
                log_probs.detach(), frame_lengths, self.vocabulary.dropped_indices, rule=self.ctc_decoding
            )
            hypotheses = [self.vocabulary.decode(ids) for ids in decoded]
            references = [
                self.vocabulary.decode(row[:length].tolist()) for row, length in zip(tokens.cpu(), target_lengths.cpu())
            ]
            self.append_metrics(batch.id, hypotheses, references)
            for utterance_id, hypothesis, reference in zip(batch.id, hypotheses, references):
                self.hypotheses.append((utterance_id, self.format_tokens(reference), self.format_tokens(hypothesis)))
        return loss

    def on_stage_start(self, stage, epoch=None):
        """New metric accumulators and hypothesis list for dev and test."""
        super().on_stage_start(stage, epoch)
        if stage != sb.Stage.TRAIN:
            self.hypotheses = []
            self.init_metrics(stage)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs, keeps the best dev checkpoint, records test statistics and hypotheses."""
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            return
        stats = {"loss": stage_loss, **self.summarize_metrics(stage)}
        if stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]},
                train_stats={"loss": self.train_loss},
                valid_stats=stats,
            )
            self.keep_best_checkpoint(stats)
            return
        self.stage_stats = stats
        condition = getattr(self, "condition", "") or "test"
        self.hparams.train_logger.log_stats(stats_meta={"test condition": condition}, test_stats=stats)
        if sb.utils.distributed.if_main_process():
            path = os.path.join(self.hparams.output_folder, "hypotheses", f"{condition}.txt")
            write_hypotheses(path, self.hypotheses)
