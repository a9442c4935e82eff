"""Data of the signal-level tasks (SD, SE, SS): an input that may already be noisy or mixed, and its sources.

In SE, SS and SD the input the upstream hears is not a clean utterance: it is a noisy recording
(VoiceBank-DEMAND), a mixture (Libri2Mix ``mix_clean``) or both (``mix_both``), and the targets are the
*sources* (the clean speech; ``s1`` and ``s2``). One rule covers every test condition
(``docs/reference/superb_tasks.md`` "Noisy conditions"):

* the upstream hears the condition's **input**: a column of the recipe CSV as released (``input: wav``,
  e.g. SE's noisy test set = the SUPERB number) or the sum of the sources (``input: sources``, e.g. SE's
  clean test speech, SS's ``s1 + s2``), then, for a corrupted condition, that input corrupted with the
  test-only noise / RIRs, seeded by the utterance id exactly as in the other tasks;
* the **targets** change only by the corruption's own gain (SpeechBrain's ``AddNoise`` scales the signal
  it adds noise to; reverberation keeps the *dry* sources as targets), so an improvement is always
  measured against the corrupted input and the dry, correctly scaled sources.

A recipe YAML declares its release conditions (``release_conditions``: name -> ``{input, condition}``)
besides the shared ``test_conditions`` block, whose conditions read ``corruption_input`` (the input the
synthetic corruptions start from). :func:`~robustdistiller.downstream.protocol.build_corruptors` merges
both; :func:`drop_missing_inputs` removes a release condition whose column a CSV lacks (``mix_both``
not generated).

CSV columns: ``ID, duration, wav`` (the released input) plus one path column per source
(``source_columns``, e.g. ``clean_wav`` or ``s1_wav, s2_wav``) and optionally more inputs
(``mix_both_wav``). Batches hold ``sig`` (``[B, T]``), ``sources`` (``[B, T, S]``, time-major so that
SpeechBrain's padding and relative lengths apply to time) and ``corruption_gain`` (``[B]``).
"""

import csv
import logging

import speechbrain as sb
import torch

from robustdistiller.downstream.data import AudioPipeline, paired_condition_key
from robustdistiller.runs.options import OptionError

logger = logging.getLogger(__name__)

SOURCES_INPUT = "sources"
"""``input`` value of a condition whose input is the sum of the sources (the clean mixture)."""


class SignalPipeline(AudioPipeline):
    """``(id, row) -> (input [T], sources [T, S] or None, gain)``: one utterance of a signal task.

    An :class:`~robustdistiller.downstream.data.AudioPipeline` (loading, seeded crops, epochs) over several
    files of one row: the input and the sources share one crop.

    Arguments
    ---------
    sample_rate : int
        Sample rate of every returned signal (files are resampled and down-mixed).
    source_columns : sequence of str
        CSV columns of the source (target) files, e.g. ``("clean_wav",)`` or ``("s1_wav", "s2_wav")``.
    input_column : str
        CSV column of the input file, or :data:`SOURCES_INPUT` (the sum of the sources).
    corruptor : Corruptor, optional
        Corrupts the input (None: as released).
    condition : str, optional
        Forced condition (test sets); None draws one per utterance (training on corrupted data).
    snr : float, optional
        Forced SNR of a noise condition.
    load_sources : bool
        Return the sources (False: only the input, e.g. SD, whose targets are frame labels; the sources
        are still read when the input is their sum).
    max_samples : int, optional
        Longest signal; longer ones are cropped (all signals at the same offset), at a random offset
        seeded by ``(seed, epoch, id)`` when ``random_crop`` is True, else from the start.
    random_crop : bool
        See ``max_samples``.
    seed : int
        Base seed of random crops.
    key_prefix : str
        Mixed into the corruption seed.

    Example
    -------
    >>> import tempfile, os, soundfile, numpy
    >>> folder = tempfile.mkdtemp()
    >>> for name, value in (("s1", 0.1), ("s2", 0.2), ("mix", 0.3)):
    ...     soundfile.write(os.path.join(folder, name + ".wav"), numpy.full(1600, value), 16000)
    >>> row = {column: os.path.join(folder, name + ".wav")
    ...        for column, name in (("s1_wav", "s1"), ("s2_wav", "s2"), ("wav", "mix"))}
    >>> mixture, sources, gain = SignalPipeline(16000, ("s1_wav", "s2_wav"), "sources")("m1", row)
    >>> mixture.shape, sources.shape, round(float(mixture[0]), 3), gain
    (torch.Size([1600]), torch.Size([1600, 2]), 0.3, 1.0)
    """

    def __init__(
        self,
        sample_rate=16000,
        source_columns=("s1_wav", "s2_wav"),
        input_column="wav",
        corruptor=None,
        condition=None,
        snr=None,
        load_sources=True,
        max_samples=None,
        random_crop=False,
        seed=0,
        key_prefix="",
    ):
        super().__init__(
            sample_rate,
            corruptor=corruptor,
            condition=condition,
            snr=snr,
            max_samples=max_samples,
            random_crop=random_crop,
            seed=seed,
            key_prefix=key_prefix,
        )
        self.source_columns = tuple(source_columns)
        self.input_column = input_column
        self.load_sources = bool(load_sources)

    def _read(self, utterance_id, row, column):
        path = row.get(column)
        if not path:
            raise OptionError(
                f"Utterance '{utterance_id}' has no file in column '{column}' of its list; the condition or "
                f"recipe needs it (columns present: {sorted(key for key, value in row.items() if value)})."
            )
        return self.load(path)

    def _crop(self, utterance_id, signals):
        offset, length = self.crop(utterance_id, min(signal.shape[0] for signal in signals))
        return [signal[offset : offset + length] for signal in signals]

    def __call__(self, utterance_id, row):
        from_sources = self.input_column == SOURCES_INPUT
        need_sources = self.load_sources or from_sources
        signals = [self._read(utterance_id, row, column) for column in self.source_columns] if need_sources else []
        if not from_sources:
            signals.append(self._read(utterance_id, row, self.input_column))
        signals = self._crop(utterance_id, signals)  # released files may differ by a few samples
        if from_sources:
            input_wav = torch.stack(signals).sum(dim=0)
            sources = torch.stack(signals, dim=1)
        else:
            input_wav = signals[-1]
            sources = torch.stack(signals[:-1], dim=1) if need_sources else None
        gain = 1.0
        if self.corruptor is not None:
            key = f"{self.key_prefix}{utterance_id}"
            corrupted = self.corruptor(input_wav, key=key, condition=self.condition, snr=self.snr)
            gain = corruption_gain(input_wav, corrupted.reference)
            input_wav = corrupted.noisy
        if sources is not None:
            sources = sources * gain
        return input_wav, (sources if self.load_sources else None), gain


def corruption_gain(clean, reference):
    """The scalar ``g`` with ``reference = g * clean``: the gain a corruption applied to its input's speech.

    :class:`~robustdistiller.data.corruption.Corruptor` returns the scaled clean signal (``AddNoise`` scales the
    signal down by ``1 - 1/(10^(SNR/20)+1)``; reverberation keeps the dry signal); the sources of a
    mixture need the same gain to stay the targets of the corrupted mixture.

    Example
    -------
    >>> clean = torch.sin(torch.arange(100.0))
    >>> corruption_gain(clean, 0.5 * clean), corruption_gain(torch.zeros(4), torch.zeros(4))
    (0.5, 1.0)
    """
    energy = float(clean.double().square().sum())
    if energy == 0.0:
        return 1.0
    return round(float((clean.double() * reference.double()).sum()) / energy, 7)


def signal_dataset(csv_file, pipeline, output_keys, extra_items=()):
    """A ``DynamicItemDataset`` over a signal-task CSV: ``sig``, ``sources`` and ``corruption_gain``.

    Arguments
    ---------
    csv_file : str
        CSV with ``ID`` and the pipeline's input and source columns (other columns stay available).
    pipeline : SignalPipeline
        Reads and corrupts each utterance.
    output_keys : list of str
        Keys of each batch (among ``id``, ``sig``, ``sources``, ``corruption_gain`` and the extra items').
    extra_items : sequence
        More dynamic items (e.g. SD's frame labels).

    Returns
    -------
    speechbrain.dataio.dataset.DynamicItemDataset
        With ``pipeline`` as its ``audio_pipeline`` attribute (re-seeded every epoch by the Brain).
    """
    dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_file)
    dataset.audio_pipeline = pipeline
    with open(csv_file, newline="", encoding="utf-8") as fin:
        columns = [column for column in next(csv.reader(fin)) if column != "ID"]
    needed = set(pipeline.source_columns) | ({pipeline.input_column} - {SOURCES_INPUT})
    missing = sorted(needed - set(columns))
    if missing:
        raise OptionError(f"{csv_file} has no column {missing}; it has {columns}.")

    @sb.utils.data_pipeline.takes("id", *columns)
    @sb.utils.data_pipeline.provides("sig", "sources", "corruption_gain")
    def read_signals(utterance_id, *values):
        input_wav, sources, gain = pipeline(utterance_id, dict(zip(columns, values)))
        yield input_wav
        yield sources
        yield float(gain)  # a float collates to a [B] tensor (PaddedBatch cannot pad 0-d tensors)

    dataset.add_dynamic_item(read_signals)
    for item in extra_items:
        dataset.add_dynamic_item(item)
    dataset.set_output_keys(list(output_keys))
    return dataset


def signal_datasets(
    hparams,
    csv_files,
    source_columns,
    output_keys,
    extra_items,
    test_corruptor,
    train_corruptor=None,
    load_sources=True,
):
    """Train / valid datasets and the ``(name, spec) -> dataset`` test-set factory of a signal task.

    Training reads ``train_input`` (default ``wav``: the released input), crops to ``max_train_samples``
    (None: whole utterances, as s3prl) at seeded random offsets, and is corrupted per utterance by
    ``train_corruptor`` when given; validation reads the released input as is. Each test condition
    reads its ``input`` (default ``corruption_input``) and is corrupted as its spec says, seeded by the
    utterance id and the kind of corruption (:func:`~robustdistiller.downstream.data.paired_condition_key`),
    so every upstream hears the same audio and ``snr20 ... snr0`` share one noise segment.

    Returns
    -------
    dict
        ``train``, ``valid`` (datasets) and ``make_test_set`` (``(name, spec) -> dataset``), as
        :func:`~robustdistiller.downstream.data.recipe_datasets`.
    """
    sample_rate = hparams["sample_rate"]
    train_pipeline = SignalPipeline(
        sample_rate,
        source_columns,
        hparams.get("train_input", "wav"),
        corruptor=train_corruptor,
        load_sources=load_sources,
        max_samples=hparams.get("max_train_samples"),
        random_crop=True,
        seed=hparams["seed"],
        key_prefix="train/",
    )
    train = signal_dataset(csv_files["train"], train_pipeline, output_keys, extra_items)
    valid_pipeline = SignalPipeline(sample_rate, source_columns, "wav", load_sources=load_sources)
    valid = signal_dataset(csv_files["valid"], valid_pipeline, output_keys, extra_items)
    default_input = hparams.get("corruption_input", SOURCES_INPUT)

    def make_test_set(name, spec):
        pipeline = SignalPipeline(
            sample_rate,
            source_columns,
            spec.get("input", default_input),
            corruptor=None if spec["condition"] == "clean" else test_corruptor,
            condition=spec["condition"],
            snr=spec.get("snr"),
            load_sources=load_sources,
            key_prefix=paired_condition_key(spec),
        )
        return signal_dataset(csv_files["test"], pipeline, output_keys, extra_items)

    return {"train": train, "valid": valid, "make_test_set": make_test_set}


def drop_missing_inputs(conditions, csv_file, source_columns, default_input=SOURCES_INPUT):
    """The conditions whose input the test CSV has for every utterance; the others are dropped with a warning.

    A release condition such as SS's ``mix_both`` exists only when that mixture was generated; a
    condition on the sum of the sources only when the list has the sources (SD from prepared Kaldi
    folders has none).

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "test.csv")
    >>> _ = open(path, "w").write("ID,wav,mix_both_wav,s1_wav,s2_wav\\nm1,a.wav,,s.wav,\\n")
    >>> sorted(drop_missing_inputs({"official": {"input": "wav", "condition": "clean"},
    ...                             "mix_both": {"input": "mix_both_wav", "condition": "clean"},
    ...                             "snr5": {"condition": "noise", "snr": 5}}, path, ["s1_wav", "s2_wav"]))
    ['official']
    """
    with open(csv_file, newline="", encoding="utf-8") as fin:
        rows = list(csv.DictReader(fin))
    kept = {}
    for name, spec in conditions.items():
        column = spec.get("input", default_input)
        columns = list(source_columns) if column == SOURCES_INPUT else [column]
        empty = [column for column in columns if not rows or not all(row.get(column) for row in rows)]
        if empty:
            logger.warning(
                "Test condition '%s' skipped: %s has no file in column(s) %s for every utterance", name, csv_file, empty
            )
            continue
        kept[name] = spec
    return kept
