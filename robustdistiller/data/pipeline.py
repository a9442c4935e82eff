"""Data pipeline of the distillation recipe: read, crop, corrupt, batch.

Each item of a prepared LibriSpeech CSV (``ID,duration,wav,...``) becomes three aligned waveforms:

- ``clean_sig``: the clean crop, which the frozen teacher hears;
- ``noisy_sig``: the corrupted crop, which the student hears;
- ``reference_sig``: the clean crop as it is present inside ``noisy_sig`` (same gain, same
  alignment), the target of the enhancement head.

Cropping and corruption happen here, inside the DataLoader workers, not in the training step (the
authors' code corrupted on the main process, their main throughput bottleneck). Every random draw of
an item is seeded from ``(seed, epoch, utterance id)`` by the :class:`~robustdistiller.data.corruption.Corruptor`,
so a run is reproducible whatever the number of workers.

A listed file that cannot be read (typically: deleted or moved after preparation, a stale list)
fails with an :class:`~robustdistiller.data.audio.AudioLoadError` naming the file and the list, and
saying how to prepare the lists again (:func:`load_listed_audio`); a damaged file (header intact,
data truncated) is named as damaged, with the advice to replace it or to prepare again, which now
leaves such files out.
"""

import logging
import os

import speechbrain as sb
import torch

from robustdistiller.data.audio import AudioLoadError, DamagedAudioError, audio_info, load_audio
from robustdistiller.inference.interface import CNN_RECEPTIVE_FIELD
from robustdistiller.runs.options import OptionError, integer_at_least

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


def load_listed_audio(wav_path, csv_file, sample_rate=16000):
    """:func:`~robustdistiller.data.audio.load_audio` of a file listed in a CSV; errors name the list.

    Arguments
    ---------
    wav_path : str
        The file, as listed.
    csv_file : str
        The list naming it (for the message).
    sample_rate : int
        Sampling rate of the returned waveform.

    Returns
    -------
    torch.Tensor
        Mono waveform ``[time]``.

    Raises
    ------
    AudioLoadError
        Naming the file and the list: a missing file means a stale list (audio moved or deleted
        after preparation); the message says to prepare again with ``--force_prep=True``. A damaged
        file (header intact, data truncated: found by decoding its last block, only after a read
        failed) is named as damaged: replace it, or prepare again, which leaves it out.

    Example
    -------
    >>> load_listed_audio("/nowhere/a.flac", "/save/train.csv")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    robustdistiller.data.audio.AudioLoadError: Audio file '/nowhere/a.flac' listed in '/save/train.csv' does not exist: ...
    """
    try:
        return load_audio(wav_path, sample_rate=sample_rate)
    except AudioLoadError as error:
        if not os.path.exists(wav_path):
            raise AudioLoadError(
                f"Audio file '{wav_path}' listed in '{csv_file}' does not exist: the list is stale (its "
                "audio was moved or deleted after preparation). Prepare the lists again: re-run with "
                "--force_prep=True."
            ) from error
        try:
            audio_info(wav_path, check_end=True)
        except DamagedAudioError as damaged:
            raise AudioLoadError(
                f"{damaged} It is listed in '{csv_file}', prepared before this check existed or before the "
                "file was damaged: replace the file, or re-run with --force_prep=True to prepare the lists "
                "again (preparation now leaves damaged files out, counted in the log and in the list's "
                "_skipped.json)."
            ) from error
        except AudioLoadError:
            pass
        raise AudioLoadError(
            f"{error} (listed in '{csv_file}'; if the file changed after preparation, the list may be "
            "stale: re-run with --force_prep=True to prepare the lists again, which leaves unreadable "
            "files out)"
        ) from error


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
        Prepared utterance list (``ID,duration,wav,...``), see :mod:`robustdistiller.data.prepare`.
    corruptor : robustdistiller.data.corruption.Corruptor
        Draws and applies the corruption of each crop.
    sample_rate : int
        Sampling rate the models expect.
    max_crop_samples : int or None
        Longest crop (250,000 samples = 15.6 s in the paper); ``None`` keeps whole utterances. At
        least :data:`~robustdistiller.inference.interface.CNN_RECEPTIVE_FIELD` (400 samples), the CNN's
        receptive field: a shorter crop gives no feature frame.
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

    Raises
    ------
    OptionError
        If ``max_crop_samples`` is below the CNN's receptive field (checked before reading the CSV).
    """
    if max_crop_samples is not None:
        max_crop_samples = integer_at_least(max_crop_samples, "max_crop_samples", 0)
        if max_crop_samples < CNN_RECEPTIVE_FIELD:
            raise OptionError(
                f"Option `max_crop_samples` = {max_crop_samples} is shorter than the CNN's receptive field: "
                f"a crop needs at least {CNN_RECEPTIVE_FIELD} samples ({1000 * CNN_RECEPTIVE_FIELD / sample_rate:g} "
                f"ms at {sample_rate} Hz) to give one feature frame; set max_crop_samples >= "
                f"{CNN_RECEPTIVE_FIELD} (or null to keep whole utterances)."
            )
    dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path=csv_file)

    @sb.utils.data_pipeline.takes("id", "wav")
    @sb.utils.data_pipeline.provides("clean_sig", "noisy_sig", "reference_sig")
    def audio_pipeline(utterance_id, wav_path):
        key = key_prefix + utterance_id
        clean_wav = load_listed_audio(wav_path, csv_file, sample_rate=sample_rate)
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
