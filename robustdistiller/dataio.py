"""Data pipeline of the distillation recipe: read, crop, corrupt, batch.

Each item of a prepared LibriSpeech CSV (``ID,duration,wav,...``) becomes three aligned waveforms:

- ``clean_sig``: the clean crop, which the frozen teacher hears;
- ``noisy_sig``: the corrupted crop, which the student hears;
- ``reference_sig``: the clean crop as it is present inside ``noisy_sig`` (same gain, same
  alignment), the target of the enhancement head.

Cropping and corruption happen here, inside the DataLoader workers, not in the training step (the
authors' code corrupted on the main process, their main throughput bottleneck). Every random draw of
an item is seeded from ``(seed, epoch, utterance id)`` by the :class:`~robustdistiller.corruption.Corruptor`,
so a run is reproducible whatever the number of workers.
"""

import logging

import speechbrain as sb
import torch

from robustdistiller.audio import load_audio

logger = logging.getLogger(__name__)


def random_crop_bounds(num_samples, max_samples, generator=None):
    """Returns ``(start, stop)`` of a random crop of at most ``max_samples`` samples.

    Arguments
    ---------
    num_samples : int
        Length of the utterance.
    max_samples : int or None
        Longest crop; ``None`` keeps the whole utterance.
    generator : torch.Generator, optional
        Random source; ``None`` takes the crop from the start (deterministic evaluation).

    Returns
    -------
    tuple of (int, int)

    Example
    -------
    >>> random_crop_bounds(100, 250)
    (0, 100)
    >>> start, stop = random_crop_bounds(1000, 250, torch.Generator().manual_seed(0))
    >>> stop - start
    250
    """
    if max_samples is None or num_samples <= max_samples:
        return 0, num_samples
    if generator is None:
        return 0, max_samples
    start = int(torch.randint(num_samples - max_samples + 1, (1,), generator=generator))
    return start, start + max_samples


def make_distillation_dataset(
    csv_file,
    corruptor,
    sample_rate=16000,
    max_crop_samples=250000,
    random_crop=True,
    condition=None,
    snr=None,
    key_prefix="",
):
    """Builds a SpeechBrain ``DynamicItemDataset`` yielding clean, corrupted and reference crops.

    Arguments
    ---------
    csv_file : str
        Prepared utterance list (``ID,duration,wav,...``), see :mod:`robustdistiller.prepare`.
    corruptor : robustdistiller.corruption.Corruptor
        Draws and applies the corruption of each crop.
    sample_rate : int
        Sampling rate the models expect.
    max_crop_samples : int or None
        Longest crop (250,000 samples = 15.6 s in the paper); ``None`` keeps whole utterances.
    random_crop : bool
        Random crop offset (training) or crop from the start (evaluation).
    condition : str, optional
        Force one corruption condition (``"clean"``, ``"noise"``, ``"reverb"``, ``"noise_reverb"``).
    snr : float, optional
        Force the SNR in dB of noisy conditions.
    key_prefix : str
        Prefix of the corruption seed key, so two datasets over one CSV draw differently.

    Returns
    -------
    speechbrain.dataio.dataset.DynamicItemDataset
        Output keys ``id``, ``clean_sig``, ``noisy_sig``, ``reference_sig``.
    """
    dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path=csv_file)

    @sb.utils.data_pipeline.takes("id", "wav")
    @sb.utils.data_pipeline.provides("clean_sig", "noisy_sig", "reference_sig")
    def audio_pipeline(utterance_id, wav_path):
        key = key_prefix + utterance_id
        clean_wav = load_audio(wav_path, sample_rate=sample_rate)
        generator = None
        if random_crop:
            generator = torch.Generator().manual_seed(corruptor.item_seed("crop/" + key))
        start, stop = random_crop_bounds(len(clean_wav), max_crop_samples, generator)
        clean_wav = clean_wav[start:stop]
        corrupted = corruptor(clean_wav, key, condition=condition, snr=snr)
        yield clean_wav
        yield corrupted.noisy
        yield corrupted.reference

    sb.dataio.dataset.add_dynamic_item([dataset], audio_pipeline)
    sb.dataio.dataset.set_output_keys([dataset], ["id", "clean_sig", "noisy_sig", "reference_sig"])
    return dataset

