"""Batches of the distillation recipe: the authors' fixed 24-crop batches, or duration-based ones.

The authors' recipe sorts utterances by length and cuts fixed batches of exactly 24 crops of at most
250,000 samples, in a shuffled order. :class:`FixedBatchSampler` does the same, with two additions a
200k-step run needs:

- a new *composition* every epoch as well as a new order: the length-sorted list is cut into buckets
  of ``batches_per_bucket`` batches, items are shuffled inside each bucket (their lengths are nearly
  equal there, so padding stays small) before the bucket is cut into batches;
- the batch is *global*: under DDP every rank builds the same epoch plan from ``(seed, epoch)`` and
  takes its own disjoint share of every batch (and, with gradient accumulation, its share is cut
  into ``accumulation`` micro-batches), so 1, 2 or 8 GPUs follow the same schedule of 24 crops per
  optimizer step.

:func:`make_batch_sampler` builds it (``batching: fixed``) or SpeechBrain's ``DynamicBatchSampler``
with explicit bucket boundaries (``batching: dynamic``). :func:`padding_statistics` measures what a
plan costs in padding, and :func:`librispeech_like_durations` gives a duration list shaped like
LibriSpeech 960 h to measure it on (tests, ``benchmarks/benchmark_step.py``).
"""

import logging

import numpy
import speechbrain as sb
import torch

logger = logging.getLogger(__name__)

BATCHING_MODES = ("fixed", "dynamic")


def crop_duration(duration, max_samples, sample_rate):
    """Duration in seconds of an utterance after cropping (what a batch really holds).

    Example
    -------
    >>> crop_duration(20.0, 250000, 16000)
    15.625
    """
    if max_samples is None:
        return duration
    return min(duration, max_samples / sample_rate)


def cnn_frames(num_samples, receptive_field=400, hop=320):
    """Frames of the DistilHuBERT/WavLM CNN for ``num_samples`` samples (0 below one receptive field).

    Example
    -------
    >>> cnn_frames(16000), cnn_frames(250000), cnn_frames(399)
    (49, 781, 0)
    """
    if num_samples < receptive_field:
        return 0
    return (int(num_samples) - receptive_field) // hop + 1


def librispeech_like_durations(num_utterances=20000, seed=0):
    """Utterance durations (s) shaped like LibriSpeech 960 h, for padding and batching checks.

    Most utterances last 10-17 s (the corpus was segmented to at most ~17 s for training), a tail
    reaches 35 s and about 13 % are short (1-5 s); the mean is about 12.6 s, as in the real corpus
    (960 h / 281,241 utterances = 12.3 s).

    Example
    -------
    >>> durations = librispeech_like_durations(5000)
    >>> 11.5 < float(durations.mean()) < 13.5, float(durations.min()) >= 1.0, float(durations.max()) <= 35.0
    (True, True, True)
    """
    generator = numpy.random.default_rng(seed)
    kinds = generator.choice(3, size=num_utterances, p=[0.80, 0.07, 0.13])
    main = generator.triangular(10.0, 13.5, 17.0, size=num_utterances)
    tail = 17.0 + generator.exponential(4.0, size=num_utterances)
    short = generator.uniform(1.0, 5.0, size=num_utterances)
    durations = numpy.where(kinds == 0, main, numpy.where(kinds == 1, tail, short))
    return numpy.clip(durations, 1.0, 35.0)


def padding_statistics(batches, lengths):
    """Crops per batch and the fraction of computed frames that are padding.

    Arguments
    ---------
    batches : iterable of list of int
        Index lists (one per batch, as a batch sampler yields them).
    lengths : sequence of int
        CNN frames (or samples) of each item.

    Returns
    -------
    dict
        ``num_batches``, ``mean_batch_size``, ``min_batch_size``, ``max_batch_size`` and
        ``padding_fraction`` = padded / computed frames, computed = batch size x longest item.

    Example
    -------
    >>> padding_statistics([[0, 1], [2]], [10, 5, 7])
    {'num_batches': 2, 'mean_batch_size': 1.5, 'min_batch_size': 1, 'max_batch_size': 2, 'padding_fraction': 0.18518518518518517}
    """
    sizes, computed, valid = [], 0, 0
    for batch in batches:
        batch_lengths = [lengths[index] for index in batch]
        sizes.append(len(batch))
        computed += len(batch) * max(batch_lengths)
        valid += sum(batch_lengths)
    return {
        "num_batches": len(sizes),
        "mean_batch_size": sum(sizes) / max(len(sizes), 1),
        "min_batch_size": min(sizes) if sizes else 0,
        "max_batch_size": max(sizes) if sizes else 0,
        "padding_fraction": (computed - valid) / computed if computed else 0.0,
    }


class FixedBatchSampler(torch.utils.data.Sampler):
    """Fixed-size batches from length-sorted buckets, reshuffled every epoch, DDP-aware.

    Epoch plan (identical on every rank, a function of ``seed`` and the epoch only): sort items by
    length (ties broken by a per-epoch random permutation), cut the sorted list into buckets of
    ``batch_size * batches_per_bucket`` items, shuffle inside each bucket, cut each bucket into
    batches of ``batch_size`` (the remainder of all buckets is pooled, sorted and cut again, so at most
    one batch of the epoch is smaller), then shuffle the batch order. Each global batch is split into
    ``world_size * accumulation`` near-equal shares; this rank yields its ``accumulation`` shares of
    each batch in turn.

    Arguments
    ---------
    lengths : sequence of float
        Length of each item as it will be batched (cropped duration, samples or frames).
    batch_size : int
        Crops per optimizer step over all ranks (24 in the paper).
    batches_per_bucket : int
        Batches per length bucket; 1 gives the authors' fixed composition (only the order changes).
    shuffle : bool
        Shuffle composition and order each epoch (False: sorted order, for evaluation).
    seed : int
        Seed of the epoch plans.
    world_size, rank : int, optional
        DDP world size and rank; default from ``torch.distributed`` when initialised, else 1 and 0.
    accumulation : int
        Gradient-accumulation factor: micro-batches per optimizer step on each rank.
    drop_last : bool
        Drop the epoch's one incomplete batch.

    Example
    -------
    >>> sampler = FixedBatchSampler([3.0, 1.0, 2.0, 5.0, 4.0], batch_size=2, seed=0)
    >>> sampler.set_epoch(1)
    >>> sorted(len(batch) for batch in sampler)
    [1, 2, 2]
    >>> two_ranks = [FixedBatchSampler(range(8), batch_size=4, world_size=2, rank=rank) for rank in (0, 1)]
    >>> [len(batch) for batch in two_ranks[0]], len(two_ranks[1])
    ([2, 2], 2)
    """

    def __init__(
        self,
        lengths,
        batch_size=24,
        batches_per_bucket=50,
        shuffle=True,
        seed=0,
        world_size=None,
        rank=None,
        accumulation=1,
        drop_last=False,
    ):
        lengths = [float(length) for length in lengths]
        if not lengths:
            raise ValueError("FixedBatchSampler: the dataset is empty")
        batch_size, batches_per_bucket, accumulation = int(batch_size), int(batches_per_bucket), int(accumulation)
        if batch_size < 1 or batches_per_bucket < 1 or accumulation < 1:
            raise ValueError(
                f"FixedBatchSampler: batch_size ({batch_size}), batches_per_bucket ({batches_per_bucket}) "
                f"and grad_accumulation_factor ({accumulation}) must be at least 1"
            )
        if world_size is None or rank is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            world_size = torch.distributed.get_world_size() if distributed else 1
            rank = torch.distributed.get_rank() if distributed else 0
        self.lengths = lengths
        self.batch_size = batch_size
        self.batches_per_bucket = batches_per_bucket
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.accumulation = accumulation
        self.drop_last = bool(drop_last)
        self.num_shares = self.world_size * self.accumulation
        if batch_size < self.num_shares:
            raise ValueError(
                f"batch_size={batch_size} crops cannot be shared by {self.world_size} process(es) x "
                f"grad_accumulation_factor {accumulation}: every micro-batch needs at least one crop"
            )
        if batch_size % self.num_shares:
            logger.warning(
                "batch_size=%d is not divisible by world size %d x grad_accumulation_factor %d: "
                "micro-batches hold %d or %d crops (the global batch stays %d crops).",
                batch_size,
                self.world_size,
                accumulation,
                batch_size // self.num_shares,
                batch_size // self.num_shares + 1,
                batch_size,
            )
        self.epoch = 0

    def set_epoch(self, epoch):
        """Selects the epoch whose plan :meth:`__iter__` yields (SpeechBrain calls it every epoch)."""
        self.epoch = int(epoch)

    def global_batches(self, epoch=None):
        """The epoch's global batches (index lists, before the split between ranks)."""
        epoch = self.epoch if epoch is None else int(epoch)
        generator = numpy.random.default_rng([self.seed, epoch])
        num_items = len(self.lengths)
        lengths = numpy.asarray(self.lengths)
        if not self.shuffle:
            order = numpy.argsort(lengths, kind="stable")
            batches = [
                order[start : start + self.batch_size].tolist() for start in range(0, num_items, self.batch_size)
            ]
            return self._drop_incomplete(batches)
        tie_break = generator.permutation(num_items)
        order = tie_break[numpy.argsort(lengths[tie_break], kind="stable")]
        bucket_size = self.batch_size * self.batches_per_bucket
        batches, remainder = [], []
        for start in range(0, num_items, bucket_size):
            bucket = order[start : start + bucket_size]
            bucket = bucket[generator.permutation(len(bucket))]
            full = len(bucket) - len(bucket) % self.batch_size
            batches += [
                bucket[offset : offset + self.batch_size].tolist() for offset in range(0, full, self.batch_size)
            ]
            remainder += bucket[full:].tolist()
        remainder.sort(key=lambda index: lengths[index])
        batches += [remainder[start : start + self.batch_size] for start in range(0, len(remainder), self.batch_size)]
        batches = self._drop_incomplete(batches)
        return [batches[index] for index in generator.permutation(len(batches))]

    def _drop_incomplete(self, batches):
        """Drops an incomplete last batch if asked, or one too small to give every share a crop."""
        if batches and len(batches[-1]) < self.batch_size:
            if self.drop_last or len(batches[-1]) < self.num_shares:
                return batches[:-1]
        return batches

    def _shares(self, batch):
        """This rank's ``accumulation`` micro-batches of one global batch."""
        bounds = numpy.linspace(0, len(batch), self.num_shares + 1).round().astype(int)
        first = self.rank * self.accumulation
        return [batch[bounds[share] : bounds[share + 1]] for share in range(first, first + self.accumulation)]

    def __iter__(self):
        for batch in self.global_batches():
            yield from self._shares(batch)

    def __len__(self):
        num_items = len(self.lengths)
        num_batches = num_items // self.batch_size
        remainder = num_items % self.batch_size
        if remainder and not self.drop_last and remainder >= self.num_shares:
            num_batches += 1
        return num_batches * self.accumulation


def make_batch_sampler(
    dataset,
    batching="fixed",
    batch_size=24,
    batches_per_bucket=50,
    max_batch_seconds=375.0,
    bucket_boundaries=None,
    max_crop_samples=250000,
    sample_rate=16000,
    shuffle=True,
    seed=42,
    accumulation=1,
    world_size=None,
    rank=None,
):
    """The training batch sampler of the distillation recipe (YAML ``batching``).

    Arguments
    ---------
    dataset : DynamicItemDataset
        Dataset with a ``duration`` field in seconds.
    batching : str
        ``"fixed"`` (:class:`FixedBatchSampler`, the authors' batches) or ``"dynamic"``
        (SpeechBrain ``DynamicBatchSampler`` by duration).
    batch_size : int
        ``fixed``: crops per optimizer step over all processes. ``dynamic``: the most crops per batch
        and process.
    batches_per_bucket : int
        ``fixed``: batches per length bucket (composition changes within a bucket every epoch).
    max_batch_seconds : float
        ``dynamic``: total cropped audio per batch and process.
    bucket_boundaries : list of float
        ``dynamic``: right boundaries (s) of the length buckets.
    max_crop_samples : int or None
        Crop length, so lengths are counted as the model sees them.
    sample_rate : int
        Sampling rate.
    shuffle : bool
        Shuffle every epoch.
    seed : int
        Seed of the shuffling.
    accumulation : int
        Gradient-accumulation factor (``fixed`` splits each batch into this many micro-batches).
    world_size, rank : int, optional
        DDP world size and rank (``fixed`` only; default: from ``torch.distributed``).

    Returns
    -------
    torch.utils.data.Sampler
        A batch sampler with ``set_epoch``.
    """
    if batching not in BATCHING_MODES:
        raise ValueError(f"batching: expected one of {list(BATCHING_MODES)}, got {batching!r}")
    durations = [
        crop_duration(float(dataset.data[data_id]["duration"]), max_crop_samples, sample_rate)
        for data_id in dataset.data_ids
    ]
    if batching == "fixed":
        return FixedBatchSampler(
            durations,
            batch_size=batch_size,
            batches_per_bucket=batches_per_bucket,
            shuffle=shuffle,
            seed=seed,
            accumulation=accumulation,
            world_size=world_size,
            rank=rank,
        )
    if not bucket_boundaries:
        raise ValueError("batching: dynamic needs bucket_boundaries (a list of seconds, ascending)")
    return sb.dataio.sampler.DynamicBatchSampler(
        dataset,
        max_batch_length=max_batch_seconds,
        bucket_boundaries=[float(boundary) for boundary in bucket_boundaries],
        lengths_list=durations,
        shuffle=shuffle,
        batch_ordering="random" if shuffle else "ascending",
        max_batch_ex=batch_size,
        seed=seed,
    )
