"""Batches as the authors' (24 crops from length-sorted buckets), a new order every epoch, DDP shares."""

import numpy
import pytest
import speechbrain as sb

from robustdistiller.data.batching import (
    FixedBatchSampler,
    cnn_frames,
    crop_duration,
    librispeech_like_durations,
    padding_statistics,
)

MAX_CROP = 250000
SAMPLE_RATE = 16000


@pytest.fixture(scope="module")
def librispeech_crops():
    """Cropped durations (s) and CNN frames of a LibriSpeech-960h-shaped list."""
    durations = librispeech_like_durations(30010, seed=3)
    crops = [crop_duration(float(duration), MAX_CROP, SAMPLE_RATE) for duration in durations]
    frames = [cnn_frames(round(crop * SAMPLE_RATE)) for crop in crops]
    return crops, frames


def test_fixed_batches_hold_24_crops_with_little_padding(librispeech_crops):
    crops, frames = librispeech_crops
    sampler = FixedBatchSampler(crops, batch_size=24, seed=1)
    sampler.set_epoch(1)
    batches = list(sampler)
    sizes = [len(batch) for batch in batches]
    assert sizes.count(24) == len(sizes) - 1 and len(sizes) == len(sampler) == -(-len(crops) // 24)
    assert sorted(index for batch in batches for index in batch) == list(range(len(crops)))
    statistics = padding_statistics(batches, frames)
    assert statistics["padding_fraction"] <= 0.05, statistics


def test_the_old_dynamic_default_mixes_lengths_and_shrinks_batches(librispeech_crops):
    """What the issue measured: SpeechBrain's warped buckets give fewer crops per step and more padding."""
    crops, frames = librispeech_crops
    dynamic = sb.dataio.sampler.DynamicBatchSampler(
        list(range(len(crops))), max_batch_length=375, num_buckets=20, lengths_list=crops, max_batch_ex=24, seed=1
    )
    old = padding_statistics(list(dynamic), frames)
    fixed = FixedBatchSampler(crops, batch_size=24, seed=1)
    new = padding_statistics(list(fixed), frames)
    assert old["mean_batch_size"] < 23 and new["mean_batch_size"] > 23.9
    assert old["padding_fraction"] > 4 * new["padding_fraction"], (old, new)


def test_every_epoch_has_a_new_composition_and_order_and_seeds_reproduce(librispeech_crops):
    crops, _ = librispeech_crops
    sampler = FixedBatchSampler(crops[:2400], batch_size=24, batches_per_bucket=10, seed=5)
    epochs = {}
    for epoch in (1, 2, 1):
        sampler.set_epoch(epoch)
        epochs.setdefault(epoch, []).append(list(sampler))
    assert epochs[1][0] == epochs[1][1]  # same seed and epoch, same plan
    assert epochs[1][0] != epochs[2][0]
    first = {tuple(sorted(batch)) for batch in epochs[1][0]}
    second = {tuple(sorted(batch)) for batch in epochs[2][0]}
    assert len(first & second) < len(first) / 2  # the batches themselves change, not only their order
    other_seed = FixedBatchSampler(crops[:2400], batch_size=24, batches_per_bucket=10, seed=6)
    other_seed.set_epoch(1)
    assert list(other_seed) != epochs[1][0]


@pytest.mark.parametrize("world_size, accumulation", [(1, 1), (2, 1), (8, 1), (5, 1), (2, 3)])
def test_ranks_share_every_global_batch_disjointly(librispeech_crops, world_size, accumulation):
    crops, _ = librispeech_crops
    crops = crops[:1000]
    ranks = [
        FixedBatchSampler(crops, batch_size=24, seed=2, world_size=world_size, rank=rank, accumulation=accumulation)
        for rank in range(world_size)
    ]
    for epoch in (1, 2):
        for sampler in ranks:
            sampler.set_epoch(epoch)
        per_rank = [list(sampler) for sampler in ranks]
        assert len({len(batches) for batches in per_rank} | {len(ranks[0])}) == 1  # same number of steps
        global_batches = ranks[0].global_batches()
        for step, global_batch in enumerate(global_batches):
            shares = [
                batch for batches in per_rank for batch in batches[step * accumulation : (step + 1) * accumulation]
            ]
            assert sorted(index for share in shares for index in share) == sorted(global_batch)
            assert all(share for share in shares)
        assert sum(len(global_batch) for global_batch in global_batches) == len(crops)
    if 24 % (world_size * accumulation) == 0:
        assert {len(batch) for batch in per_rank[0][:-accumulation]} == {24 // (world_size * accumulation)}


def test_bad_batch_settings_are_refused():
    with pytest.raises(ValueError, match="grad_accumulation_factor"):
        FixedBatchSampler([1.0] * 10, batch_size=4, world_size=2, rank=0, accumulation=3)
    with pytest.raises(ValueError, match="empty"):
        FixedBatchSampler([], batch_size=4)


def test_unshuffled_batches_are_sorted_by_length():
    lengths = numpy.random.default_rng(0).uniform(1, 10, size=50)
    batches = list(FixedBatchSampler(lengths, batch_size=8, shuffle=False))
    maxima = [max(lengths[index] for index in batch) for batch in batches]
    assert maxima == sorted(maxima)
