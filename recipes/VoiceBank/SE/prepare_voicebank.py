"""Data preparation of SUPERB speech enhancement (SE) on VoiceBank-DEMAND.

The release (Edinburgh DataShare, "Noisy speech database for training speech enhancement algorithms
and TTS models"), 16 kHz version, as s3prl's ``enhancement_stft`` reads it (``docs/reference/corpora.md``
"VoiceBank-DEMAND", ``docs/reference/superb_tasks.md`` "SE")::

    <data_folder>/clean_trainset_28spk_wav_16k/pNNN_NNN.wav   noisy_trainset_28spk_wav_16k/pNNN_NNN.wav
    <data_folder>/clean_testset_wav_16k/pNNN_NNN.wav          noisy_testset_wav_16k/pNNN_NNN.wav
    <data_folder>/trainset_28spk_txt/, testset_txt/           (transcripts, optional, not read)

The 48 kHz release folders (the same names without ``_16k``) are accepted too when the 16 kHz ones are
absent: the recipe's loader resamples to ``sample_rate``.

Splits (s3prl): **dev** = every training file of the ``dev_speakers`` (p226 and p287), **train** = the
other training files (11,572 - 770 = 10,802 in the release), **test** = the test set (824 files of p232
and p257). Each noisy file is paired with its clean twin (same file name); a noisy file without one is
an error naming the count and an example.

Writes ``train.csv``, ``valid.csv`` and ``test.csv`` (``ID,duration,wav,clean_wav``: ``wav`` is the
noisy input, ``clean_wav`` the target) to the save folder; nothing is written under the data folder.
"""

import logging
import os
import re

from robustdistiller.data.audio import audio_info
from robustdistiller.data.files import list_folder
from robustdistiller.downstream.data import check_split_lists
from robustdistiller.data.prepare.lists import is_prepared, mark_prepared, write_csv

logger = logging.getLogger(__name__)

HEADER = ["ID", "duration", "wav", "clean_wav"]
RELEASE_SPLITS = {"train": "trainset_28spk", "test": "testset"}
DEFAULT_DEV_SPEAKERS = ("p226", "p287")
FILE_NAME = re.compile(r"^(p\d+)_\d+\.wav$")
LAYOUT = (
    "{clean,noisy}_trainset_28spk_wav_16k/pNNN_NNN.wav and {clean,noisy}_testset_wav_16k/pNNN_NNN.wav "
    "(or the 48 kHz release's folders without _16k)"
)


def release_folder(data_folder, kind, split):
    """The folder of ``kind`` (``clean`` | ``noisy``) files of a release split: the 16 kHz one, else the 48 kHz one.

    Example
    -------
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "noisy_testset_wav"))
    >>> os.path.basename(release_folder(root, "noisy", "test"))
    'noisy_testset_wav'
    >>> release_folder(root, "clean", "test")
    Traceback (most recent call last):
    ...
    FileNotFoundError: VoiceBank-DEMAND folder ... has no clean_testset_wav_16k (nor clean_testset_wav) ...
    """
    name = f"{kind}_{RELEASE_SPLITS[split]}_wav"
    for candidate in (f"{name}_16k", name):
        path = os.path.join(data_folder, candidate)
        if os.path.isdir(path):
            return path
    raise FileNotFoundError(
        f"VoiceBank-DEMAND folder '{data_folder}' has no {name}_16k (nor {name}) folder; expected the release "
        f"layout {LAYOUT}. Set data_folder to the folder that holds them."
    )


def speaker_of(file_name):
    """The speaker of a VoiceBank file name (None when it is not ``pNNN_NNN.wav``).

    Example
    -------
    >>> speaker_of("p226_001.wav"), speaker_of("notes.txt")
    ('p226', None)
    """
    match = FILE_NAME.match(file_name)
    return match.group(1) if match else None


def paired_rows(data_folder, split):
    """``[ID, duration, noisy path, clean path]`` rows of a release split, sorted by ID.

    Raises
    ------
    FileNotFoundError
        A folder is missing, or noisy files have no clean twin (count and an example).
    ValueError
        The split has no ``pNNN_NNN.wav`` file.
    """
    noisy_folder = release_folder(data_folder, "noisy", split)
    clean_folder = release_folder(data_folder, "clean", split)
    noisy_files = list_folder(noisy_folder, "VoiceBank-DEMAND noisy folder")[1]
    names = [name for name in noisy_files if speaker_of(name)]
    ignored = [name for name in noisy_files if not speaker_of(name)]
    if ignored:
        logger.warning(
            "%d files of %s are not pNNN_NNN.wav and are ignored, e.g. %s", len(ignored), noisy_folder, ignored[0]
        )
    if not names:
        raise ValueError(f"{noisy_folder} has no pNNN_NNN.wav file; expected the release layout {LAYOUT}.")
    clean_names = {name for name in list_folder(clean_folder, "VoiceBank-DEMAND clean folder")[1] if speaker_of(name)}
    orphans = [name for name in names if name not in clean_names]
    if orphans:
        raise FileNotFoundError(
            f"{len(orphans)} of the {len(names)} noisy files of {noisy_folder} have no clean twin of the same name "
            f"in {clean_folder}, e.g. {orphans[0]}; the release pairs every noisy file with its clean file."
        )
    unpaired = len(clean_names) - len(names)
    if unpaired:
        logger.warning("%d clean files of %s have no noisy twin and are ignored", unpaired, clean_folder)
    rows = []
    for name in names:
        noisy_path = os.path.abspath(os.path.join(noisy_folder, name))
        frames, sample_rate, _ = audio_info(noisy_path)
        rows.append(
            [
                name[: -len(".wav")],
                f"{frames / sample_rate:.4f}",
                noisy_path,
                os.path.abspath(os.path.join(clean_folder, name)),
            ]
        )
    return rows


def prepare_voicebank(data_folder, save_folder, csv_files=None, dev_speakers=DEFAULT_DEV_SPEAKERS, skip_prep=False):
    """Writes the SE lists; returns ``{"train", "valid", "test"}`` paths.

    Arguments
    ---------
    data_folder : str
        The folder holding the release's ``{clean,noisy}_{trainset_28spk,testset}_wav_16k`` folders.
    save_folder : str
        Output folder of the CSVs (and of the preparation marker).
    csv_files : dict, optional
        ``{"train", "valid", "test"}`` output paths (default ``<save_folder>/<split>.csv``).
    dev_speakers : sequence of str
        Training speakers whose files form the dev set (s3prl: p226 and p287).
    skip_prep : bool
        Only return the paths.

    Returns
    -------
    dict

    Raises
    ------
    FileNotFoundError
        A release folder is missing (named), or noisy files lack their clean twin.
    ValueError
        No training file of a dev speaker (the option ``dev_speakers``), or an empty split.
    """
    paths = {split: os.path.join(save_folder, f"{split}.csv") for split in ("train", "valid", "test")}
    paths.update(csv_files or {})
    if skip_prep:
        return paths
    dev_speakers = sorted(dev_speakers)
    options = {"data_folder": os.path.abspath(data_folder), "dev_speakers": dev_speakers}
    if is_prepared(save_folder, "voicebank_se", options, list(paths.values())):
        logger.info("VoiceBank-DEMAND SE lists already prepared in %s", save_folder)
        return paths
    if not os.path.isdir(data_folder):
        raise FileNotFoundError(
            f"VoiceBank-DEMAND data_folder '{data_folder}' does not exist; expected the release layout {LAYOUT}."
        )
    release_train = paired_rows(data_folder, "train")
    test = paired_rows(data_folder, "test")
    valid = [row for row in release_train if speaker_of(row[0] + ".wav") in dev_speakers]
    train = [row for row in release_train if speaker_of(row[0] + ".wav") not in dev_speakers]
    found = {speaker_of(row[0] + ".wav") for row in valid}
    missing = [speaker for speaker in dev_speakers if speaker not in found]
    if not valid or not train:
        raise ValueError(
            f"dev_speakers {dev_speakers} leave {len(train)} training and {len(valid)} dev files of the "
            f"{len(release_train)} in {release_folder(data_folder, 'noisy', 'train')}; s3prl's dev speakers are "
            f"p226 and p287."
        )
    if missing:
        logger.warning("dev_speakers %s have no training file in %s", missing, data_folder)
    os.makedirs(save_folder, exist_ok=True)
    for split, rows in (("train", train), ("valid", valid), ("test", test)):
        os.makedirs(os.path.dirname(os.path.abspath(paths[split])), exist_ok=True)
        write_csv(paths[split], HEADER, rows)
        logger.info("Wrote %s: %d utterance pairs", paths[split], len(rows))
    check_split_lists(paths)  # every split has rows (names the empty one)
    mark_prepared(save_folder, "voicebank_se", options)
    return paths
