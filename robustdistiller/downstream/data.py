"""Audio pipelines of the downstream recipes.

:class:`AudioPipeline` reads (and crops) an utterance and, for a test condition, corrupts it with a
:class:`~robustdistiller.data.corruption.Corruptor` seeded by the utterance id -- every upstream hears
exactly the same corrupted audio. :func:`audio_dataset` and :func:`condition_test_set_factory` build
the datasets of training and of each test condition.

:func:`check_split_lists` is the check every recipe's preparation runs on the lists it wrote, before
it marks them prepared: each split has rows, and every label an evaluation split holds (a KS word,
an SID speaker, an ER emotion, an IC slot value) occurs in the training split, the only one the
classifier learns its classes from. Without it, an empty dev list fails as ``IndexError: list
index out of range`` and a test speaker never seen in training as a ``KeyError``, after training.
"""

import csv
import logging

import speechbrain as sb
import torch

from robustdistiller.data.audio import load_audio
from robustdistiller.data.corruption import hash_seed
from robustdistiller.downstream.protocols import read_manifest

logger = logging.getLogger(__name__)


class AudioPipeline:
    """SpeechBrain dynamic item: ``(id, wav, start, stop)`` -> the (cropped, corrupted) waveform.

    Arguments
    ---------
    sample_rate : int
        Sample rate of the returned waveform (files are resampled and down-mixed).
    corruptor : Corruptor, optional
        Corrupts the audio (None: clean).
    condition : str, optional
        Forced condition (test sets); None draws one per utterance from the corruptor's
        probabilities (training on corrupted data).
    snr : float, optional
        Forced SNR of a noise condition.
    max_samples : int, optional
        Longest waveform; longer ones are cropped, at a random offset seeded by ``(seed, epoch, id)``
        when ``random_crop`` is True, else from the start.
    random_crop : bool
        See ``max_samples``.
    seed : int
        Base seed of random crops.
    key_prefix : str
        Mixed into the corruption seed (e.g. the condition name).

    Example
    -------
    >>> import tempfile, os, soundfile, numpy
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> soundfile.write(path, numpy.zeros(16000), 16000)
    >>> AudioPipeline(16000, max_samples=8000)("utt", path, 0, -1).shape
    torch.Size([8000])
    """

    def __init__(
        self,
        sample_rate=16000,
        corruptor=None,
        condition=None,
        snr=None,
        max_samples=None,
        random_crop=False,
        seed=0,
        key_prefix="",
    ):
        self.sample_rate = int(sample_rate)
        self.corruptor = corruptor
        self.condition = condition
        self.snr = snr
        self.max_samples = None if max_samples is None else int(max_samples)
        self.random_crop = bool(random_crop)
        self.seed = int(seed)
        self.key_prefix = key_prefix
        self.epoch = 0

    def set_epoch(self, epoch):
        """New random crops and corruption draws for every epoch."""
        self.epoch = int(epoch)
        if self.corruptor is not None:
            self.corruptor.set_epoch(epoch)

    def load(self, wav, start=0, stop=-1):
        """The utterance's samples ``[start, stop)`` (``stop < 0``: to the end), resampled and down-mixed."""
        start = int(start or 0)
        stop = None if stop is None or int(stop) < 0 else int(stop)
        return load_audio(wav, sample_rate=self.sample_rate, start=start, stop=stop)

    def crop(self, utterance_id, num_samples):
        """``(offset, length)`` of the kept part of a ``num_samples`` signal (see ``max_samples``)."""
        if self.max_samples is None or num_samples <= self.max_samples:
            return 0, num_samples
        offset = 0
        if self.random_crop:
            generator = torch.Generator().manual_seed(hash_seed(self.seed, self.epoch, utterance_id))
            offset = int(torch.randint(num_samples - self.max_samples + 1, (1,), generator=generator))
        return offset, self.max_samples

    def __call__(self, utterance_id, wav, start=0, stop=-1):
        waveform = self.load(wav, start, stop)
        offset, length = self.crop(utterance_id, waveform.shape[0])
        waveform = waveform[offset : offset + length]
        if self.corruptor is not None:
            key = f"{self.key_prefix}{utterance_id}"
            waveform = self.corruptor(waveform, key=key, condition=self.condition, snr=self.snr).noisy
        return waveform


class RenderedAudioPipeline(AudioPipeline):
    """Reads the rendered (already corrupted) file of an utterance under one condition.

    Used when a recipe scores the files of :mod:`robustdistiller.downstream.render_protocol`
    (``test_audio_manifest``); ``wav``, ``start`` and ``stop`` of the test list are ignored.

    Arguments
    ---------
    sample_rate : int
        Sample rate of the returned waveform.
    paths : dict
        ``{utterance id: rendered file}`` of the condition.
    condition : str
        The condition's name (for the error message).
    """

    def __init__(self, sample_rate, paths, condition):
        super().__init__(sample_rate)
        self.paths = paths
        self.condition_name = condition

    def __call__(self, utterance_id, wav=None, start=0, stop=-1):
        if utterance_id not in self.paths:
            raise KeyError(
                f"Utterance '{utterance_id}' has no rendered file of condition '{self.condition_name}' in "
                "`test_audio_manifest`: render the same test list again."
            )
        return self.load(self.paths[utterance_id])


def audio_dataset(csv_file, pipeline, output_keys, replacements=None, extra_items=()):
    """A ``DynamicItemDataset`` over a recipe CSV with ``sig`` computed by ``pipeline``.

    Arguments
    ---------
    csv_file : str
        CSV with at least ``ID, wav, start, stop`` (``stop=-1``: to the end).
    pipeline : AudioPipeline
        Computes ``sig``.
    output_keys : list of str
        Keys of each batch (``id`` and ``sig`` are usual).
    replacements : dict, optional
        ``$placeholders`` of the CSV.
    extra_items : sequence
        More dynamic items (functions decorated with ``takes``/``provides``).

    Returns
    -------
    speechbrain.dataio.dataset.DynamicItemDataset
        With the ``pipeline`` as its ``audio_pipeline`` attribute: the Brain that trains on it gives it
        the epoch (:meth:`~robustdistiller.downstream.brain.DownstreamBrain.make_dataloader`).
    """
    dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_file, replacements=replacements or {})
    dataset.audio_pipeline = pipeline

    @sb.utils.data_pipeline.takes("id", "wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def read_signal(utterance_id, wav, start, stop):
        return pipeline(utterance_id, wav, start, stop)

    dataset.add_dynamic_item(read_signal)
    for item in extra_items:
        dataset.add_dynamic_item(item)
    dataset.set_output_keys(list(output_keys))
    return dataset


def training_pipeline(hparams, corruptor=None):
    """The training :class:`AudioPipeline` of a recipe: random crops, optional corruption, epoch seeds.

    Reads ``sample_rate``, ``seed`` and ``max_train_samples`` (None keeps whole utterances).
    """
    return AudioPipeline(
        hparams["sample_rate"],
        corruptor=corruptor,
        max_samples=hparams.get("max_train_samples"),
        random_crop=True,
        seed=hparams["seed"],
        key_prefix="train/",
    )


def recipe_datasets(hparams, csv_files, output_keys, extra_items, test_corruptor, train_corruptor=None):
    """The datasets every trained downstream recipe builds from its train / valid / test lists.

    Training: random crops and optional corruption (:func:`training_pipeline`); validation: clean
    whole utterances; test: ``(name, spec) -> dataset`` under each condition
    (:func:`condition_test_set_factory`). ``extra_items`` (label / token encoders) go on all three.

    Returns
    -------
    dict
        ``train``, ``valid`` (datasets) and ``make_test_set`` (``(name, spec) -> dataset``): the shape every
        recipe's ``dataio_prepare`` returns, its task's extras added.
    """
    train = audio_dataset(
        csv_files["train"], training_pipeline(hparams, train_corruptor), output_keys, extra_items=extra_items
    )
    valid = audio_dataset(
        csv_files["valid"], AudioPipeline(hparams["sample_rate"]), output_keys, extra_items=extra_items
    )
    make_test_set = condition_test_set_factory(hparams, csv_files["test"], test_corruptor, output_keys, extra_items)
    return {"train": train, "valid": valid, "make_test_set": make_test_set}


def paired_condition_key(spec):
    """The corruption-seed prefix of a test condition: its kind of corruption, not its name or SNR.

    Example
    -------
    >>> paired_condition_key({"condition": "noise", "snr": 0}) == paired_condition_key({"condition": "noise", "snr": 20})
    True
    """
    return f"{spec['condition']}/"


def condition_pipeline(sample_rate, corruptor, spec):
    """The :class:`AudioPipeline` of one test condition ``spec`` (``{"condition", "snr"}``): what a recipe's test
    set and :mod:`robustdistiller.downstream.render_protocol` both play, so rendered audio is the tested audio.

    Example
    -------
    >>> pipeline = condition_pipeline(16000, None, {"condition": "noise", "snr": 5})
    >>> pipeline.condition, pipeline.snr, pipeline.key_prefix
    ('noise', 5, 'noise/')
    """
    return AudioPipeline(
        sample_rate,
        corruptor=corruptor,
        condition=spec["condition"],
        snr=spec.get("snr"),
        key_prefix=paired_condition_key(spec),
    )


def condition_test_set_factory(hparams, csv_file, corruptor, output_keys, extra_items=()):
    """``(name, spec) -> dataset``: the test set under one condition, for ``evaluate_conditions``.

    Every utterance is corrupted with the condition ``spec`` (``{"condition", "snr"}``), seeded by the
    utterance id and the kind of corruption (``spec["condition"]``) only, so every upstream gets the same
    audio and the conditions of one kind are *paired*: snr20 ... snr0 add the same noise segment to an
    utterance, scaled to each SNR, and an SNR curve differs by the SNR alone. With ``test_audio_manifest``
    the audio of a rendered condition is read from its files (:class:`RenderedAudioPipeline`).
    """

    rendered = read_manifest(hparams["test_audio_manifest"])[1] if hparams.get("test_audio_manifest") else None

    def make_test_set(name, spec):
        if rendered is not None and spec.get("rendered"):
            paths = {utterance: path for (condition, utterance), path in rendered.items() if condition == name}
            return audio_dataset(
                csv_file,
                RenderedAudioPipeline(hparams["sample_rate"], paths, name),
                output_keys,
                extra_items=extra_items,
            )
        pipeline = condition_pipeline(hparams["sample_rate"], corruptor, spec)
        return audio_dataset(csv_file, pipeline, output_keys, extra_items=extra_items)

    return make_test_set


class SplitError(ValueError):
    """A prepared split is empty or holds labels training never sees; names the split, file and labels."""


def _read_split_rows(csv_file):
    """``[(line number, row dict), ...]`` of a prepared CSV."""
    with open(csv_file, newline="", encoding="utf-8") as fin:
        reader = csv.DictReader(fin)
        return [(reader.line_num, row) for row in reader]


def check_split_lists(csv_files, label_columns=(), train_split="train", evaluated_splits=None, hint=""):
    """Checks a recipe's prepared lists: every split has rows, every evaluation label is known to training.

    Arguments
    ---------
    csv_files : dict
        ``split name -> CSV path`` (e.g. ``{"train": ..., "dev": ..., "test": ...}``; the trial lists of
        ASV too).
    label_columns : str or sequence of str
        Columns whose values are classes learnt from ``train_split`` (a classifier's labels, e.g.
        ``"label"``, ``"speaker"``, the slots of IC). Empty: only the row counts are checked.
    train_split : str
        The split the classes are learnt from.
    evaluated_splits : sequence of str, optional
        Splits whose labels must all occur in ``train_split`` (default: every other split of
        ``csv_files``).
    hint : str
        Recipe advice appended to the message (what the split rule is, which data file to check).

    Raises
    ------
    SplitError
        Naming, for every problem found, the split, its CSV, and the labels missing from training
        with the row (ID and line) of their first occurrence.

    Example
    -------
    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> files = {split: os.path.join(folder, f"{split}.csv") for split in ("train", "dev", "test")}
    >>> for split, labels in (("train", ["yes", "no"]), ("dev", ["no"]), ("test", ["yes", "up"])):
    ...     with open(files[split], "w") as fout:
    ...         lines = [f"{split}{index},{label}\\n" for index, label in enumerate(labels)]
    ...         _ = fout.write("ID,label\\n" + "".join(lines))
    >>> check_split_lists(files, "label")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    robustdistiller.downstream.data.SplitError: ... the test split ('...test.csv') has 1 label value never seen ...: 'up' (first in row test1, line 3).
    """
    label_columns = [label_columns] if isinstance(label_columns, str) else list(label_columns)
    if evaluated_splits is None:
        evaluated_splits = [split for split in csv_files if split != train_split]
    rows = {split: _read_split_rows(path) for split, path in csv_files.items()}
    problems = [
        f"the {split} split is empty: '{csv_files[split]}' has no row"
        for split, split_rows in rows.items()
        if not split_rows
    ]
    if label_columns and rows.get(train_split):
        for column in label_columns:
            known = {row.get(column) for _, row in rows[train_split]}
            for split in evaluated_splits:
                first_seen = {}
                for line_number, row in rows.get(split, []):
                    label = row.get(column)
                    if label not in known and label not in first_seen:
                        first_seen[label] = (
                            f"row {row['ID']}, line {line_number}" if row.get("ID") else f"line {line_number}"
                        )
                if first_seen:
                    examples = "; ".join(
                        f"{label!r} (first in {where})" for label, where in list(first_seen.items())[:10]
                    )
                    problems.append(
                        f"the {split} split ('{csv_files[split]}') has {len(first_seen)} {column} "
                        f"value{'s' if len(first_seen) != 1 else ''} never seen in the {train_split} split "
                        f"('{csv_files[train_split]}'), so the classifier cannot learn "
                        f"{'them' if len(first_seen) != 1 else 'it'}: {examples}"
                    )
    if problems:
        raise SplitError(
            f"The prepared lists cannot be trained and evaluated: {'; '.join(problems)}." + (f" {hint}" if hint else "")
        )
    logger.info(
        "Prepared lists checked: %s", ", ".join(f"{split} {len(split_rows)} rows" for split, split_rows in rows.items())
    )
