"""Lists of Libri2Mix (``wav16k/min``) for the SUPERB source separation recipe.

Reads the release's metadata ``<data_folder>/<sample_rate_folder>/<mode>/metadata/mixture_<split>_mix_clean.csv``
(``mixture_ID,mixture_path,source_1_path,source_2_path,length``) and, when present,
``mixture_<split>_mix_both.csv``, and writes one recipe CSV per set with the columns
``ID, duration, wav, s1_wav, s2_wav, mix_both_wav`` (``wav`` = ``mix_clean``; ``mix_both_wav`` empty when
``mix_both`` was not generated). Nothing is written under the data folder.

The metadata holds the paths of the machine that generated the mixtures: a path that does not exist
is looked up under ``data_folder`` by its last components (``<sample_rate_folder>/<mode>/<split>/<kind>/<file>``),
and the log says how many were resolved that way.

Validation uses s3prl's ``dev_1000`` (``downstream/separation_stft/scripts/LibriMix/subsample.py``): the dev
mixture ids sorted, ``random.seed(7)``, ``random.shuffle``, the first 1,000 (:func:`subsample_ids`).
"""

import csv
import logging
import os
import random

from robustdistiller.downstream.data import check_split_lists

logger = logging.getLogger(__name__)

CSV_COLUMNS = ("ID", "duration", "wav", "s1_wav", "s2_wav", "mix_both_wav")
METADATA_COLUMNS = ("mixture_ID", "mixture_path", "source_1_path", "source_2_path", "length")
PATH_COMPONENTS = 5
"""Components of a release path below the Libri2Mix root: ``wav16k/min/<split>/<kind>/<file>``."""


def subsample_ids(ids, size, seed=7):
    """s3prl's dev subset: ``sorted(ids)``, ``random.seed(seed)``, ``random.shuffle``, the first ``size``.

    Returns the chosen ids in that (shuffled) order; ``size`` None (or at least ``len(ids)``) keeps all.
    A private ``random.Random(seed)`` draws exactly what ``random.seed(seed); random.shuffle(...)`` does,
    without touching the global generator.

    Example
    -------
    >>> ids = ["c", "a", "d", "b"]
    >>> random.seed(7); reference = sorted(ids); random.shuffle(reference)
    >>> subsample_ids(ids, 2) == reference[:2], sorted(subsample_ids(ids, None))
    (True, ['a', 'b', 'c', 'd'])
    """
    ordered = sorted(ids)
    random.Random(seed).shuffle(ordered)
    return ordered if size is None else ordered[: int(size)]


def resolve_release_path(path, data_folder, metadata_file):
    """The file a metadata path names: as written when it exists, else under ``data_folder`` by its last components.

    Returns
    -------
    (str, bool)
        The path and whether it was resolved under ``data_folder``.

    Raises
    ------
    FileNotFoundError
        Naming the metadata file, the path and where it was looked for.

    Example
    -------
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "wav16k", "min", "dev", "s1"))
    >>> _ = open(os.path.join(root, "wav16k", "min", "dev", "s1", "a_b.wav"), "w")
    >>> path, moved = resolve_release_path("/elsewhere/Libri2Mix/wav16k/min/dev/s1/a_b.wav", root, "m.csv")
    >>> path == os.path.join(root, "wav16k", "min", "dev", "s1", "a_b.wav"), moved
    (True, True)
    """
    if os.path.isabs(path) and os.path.isfile(path):
        return path, False
    parts = [part for part in path.replace("\\", "/").split("/") if part]
    candidates = [os.path.join(data_folder, path)] if not os.path.isabs(path) else []
    candidates.append(os.path.join(data_folder, *parts[-PATH_COMPONENTS:]))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate, True
    raise FileNotFoundError(
        f"{metadata_file} names '{path}', which does not exist, nor does {' or '.join(candidates)} (its last "
        f"{PATH_COMPONENTS} components under data_folder). Expected the Libri2Mix layout "
        "<data_folder>/wav16k/min/{train-100,dev,test}/{mix_clean,s1,s2}/<id1>_<id2>.wav."
    )


def read_metadata(metadata_file, data_folder, columns=METADATA_COLUMNS):
    """``mixture_ID -> row`` of a Libri2Mix metadata CSV, its paths resolved (:func:`resolve_release_path`).

    Returns
    -------
    (dict, int)
        The rows (``mixture_ID`` -> ``{column: value}``) and how many paths were resolved under ``data_folder``.
    """
    with open(metadata_file, newline="", encoding="utf-8") as fin:
        reader = csv.DictReader(fin)
        missing = sorted(set(columns) - set(reader.fieldnames or []))
        if missing:
            raise ValueError(
                f"{metadata_file} has no column {missing}; a Libri2Mix metadata file has {list(columns)} "
                f"(it has {reader.fieldnames})."
            )
        rows, moved = {}, 0
        for row in reader:
            for column in columns:
                if column.endswith("_path"):
                    row[column], resolved = resolve_release_path(row[column], data_folder, metadata_file)
                    moved += resolved
            rows[row["mixture_ID"]] = row
    if not rows:
        raise ValueError(f"{metadata_file} lists no mixture.")
    return rows, moved


def prepare_librimix_ss(
    data_folder,
    save_folder,
    csv_files,
    splits=None,
    sample_rate_folder="wav16k",
    mode="min",
    sample_rate=16000,
    valid_subset_size=1000,
    valid_subset_seed=7,
    skip_prep=False,
):
    """Writes the train / valid / test CSVs of the SS recipe.

    Arguments
    ---------
    data_folder : str
        The Libri2Mix root (holding ``wav16k/min/...``).
    save_folder : str
        Where the lists go (never under ``data_folder``).
    csv_files : dict
        ``{"train", "valid", "test"} -> CSV path``.
    splits : dict, optional
        ``{"train", "valid", "test"} -> Libri2Mix split`` (default ``train-100``, ``dev``, ``test``).
    sample_rate_folder, mode : str
        ``wav16k`` / ``min`` (SUPERB).
    sample_rate : int
        Rate of the files, for ``duration`` (metadata ``length`` is in samples).
    valid_subset_size : int or None
        s3prl's ``dev_1000`` (:func:`subsample_ids`); None: the whole dev split.
    valid_subset_seed : int
        Its seed (s3prl: 7).
    skip_prep : bool
        Do nothing.

    Returns
    -------
    dict
        ``{"train", "valid", "test"} -> number of mixtures``.
    """
    if skip_prep:
        return None
    splits = {"train": "train-100", "valid": "dev", "test": "test", **(splits or {})}
    metadata_folder = os.path.join(data_folder, sample_rate_folder, mode, "metadata")
    if not os.path.isdir(metadata_folder):
        raise FileNotFoundError(
            f"No folder {metadata_folder}. data_folder must be the Libri2Mix root, with "
            f"{sample_rate_folder}/{mode}/metadata/mixture_<split>_mix_clean.csv and "
            f"{sample_rate_folder}/{mode}/<split>/{{mix_clean,s1,s2}}/<id1>_<id2>.wav (LibriMix's generate_librimix.sh "
            "with --n_src 2, 16 kHz, min mode)."
        )
    counts = {}
    for key in ("train", "valid", "test"):
        split = splits[key]
        metadata_file = os.path.join(metadata_folder, f"mixture_{split}_mix_clean.csv")
        if not os.path.isfile(metadata_file):
            raise FileNotFoundError(
                f"No metadata file {metadata_file} for the {key} set (split '{split}'); "
                f"{metadata_folder} has {sorted(os.listdir(metadata_folder))}."
            )
        rows, moved = read_metadata(metadata_file, data_folder)
        both_file = os.path.join(metadata_folder, f"mixture_{split}_mix_both.csv")
        both, both_moved = ({}, 0)
        if os.path.isfile(both_file):
            both, both_moved = read_metadata(both_file, data_folder)
        if moved or both_moved:
            logger.info(
                "%s: %d paths of its metadata do not exist on this machine and were found under %s by "
                "their last components",
                split,
                moved + both_moved,
                data_folder,
            )
        ids = sorted(rows)
        if key == "valid" and valid_subset_size is not None:
            ids = sorted(subsample_ids(ids, valid_subset_size, valid_subset_seed))
            logger.info(
                "Validation: %d of the %d mixtures of %s (s3prl's subsample: seed %d)",
                len(ids),
                len(rows),
                split,
                valid_subset_seed,
            )
        os.makedirs(os.path.dirname(csv_files[key]) or ".", exist_ok=True)
        temporary = csv_files[key] + ".tmp"
        with open(temporary, "w", newline="", encoding="utf-8") as fout:
            writer = csv.writer(fout)
            writer.writerow(CSV_COLUMNS)
            for mixture_id in ids:
                row = rows[mixture_id]
                mix_both = both.get(mixture_id, {}).get("mixture_path", "")
                writer.writerow(
                    [
                        mixture_id,
                        f"{int(row['length']) / sample_rate:.4f}",
                        row["mixture_path"],
                        row["source_1_path"],
                        row["source_2_path"],
                        mix_both,
                    ]
                )
        os.replace(temporary, csv_files[key])
        counts[key] = len(ids)
        logger.info(
            "%s: %d mixtures (%s; mix_both %s) -> %s",
            key,
            len(ids),
            split,
            "present" if both else "not generated",
            csv_files[key],
        )
    check_split_lists({key: csv_files[key] for key in ("train", "valid", "test")})  # every set has rows
    return counts
