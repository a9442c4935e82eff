"""ASR lists of LibriSpeech: one CSV per subset (``ID, duration, wav, start, stop, spk_id, words``).

A thin wrapper of :func:`robustdistiller.downstream.librispeech.prepare_librispeech_splits` (shared
with the PR recipe): ``LibriSpeech/<subset>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac`` with the
chapter's ``<spk>-<chapter>.trans.txt`` lines ``<uttid> UPPER CASE WORDS``.
"""

import logging

from robustdistiller.downstream.librispeech import prepare_librispeech_splits

logger = logging.getLogger(__name__)


def prepare_librispeech_asr(data_folder, csv_files, skip_prep=False):
    """Writes ``csv_files`` (``subset -> CSV path``, or ``(subset, CSV path)`` pairs); returns it.

    Raises
    ------
    FileNotFoundError
        The data folder or a subset folder is missing (the expected layout is named).
    ValueError
        A subset has no usable utterance.
    """
    return prepare_librispeech_splits(data_folder, csv_files, skip_prep=skip_prep)
