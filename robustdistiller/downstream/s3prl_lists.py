"""Class maps and lists published with s3prl 0.4.18 that the recipes reproduce.

* :data:`ER_CLASSES`: the emotion classes of s3prl's ER task in its output order (``labels`` of its
  ``downstream/emotion/meta_data/*/*.json``: ``neu`` 0, ``hap`` 1, ``ang`` 2, ``sad`` 3);
* :func:`read_iemocap_s3prl_order` / :func:`iemocap_s3prl_pool`: the order of s3prl's published IEMOCAP
  metadata, shipped as package data (``package_data/iemocap_s3prl_order.tsv``, whose header names its
  source). s3prl splits each fold's training list into train and dev by ``torch.manual_seed(0)`` and
  ``random_split`` *in that order*, so the order fixes which utterances are dev.

The character and phone orders of ASR and PR are in :mod:`robustdistiller.downstream.ctc`, the SID
speaker order in :func:`robustdistiller.downstream.classification.sorted_column_values`.
"""

import importlib.resources
import json
import os

from robustdistiller.data.files import read_text, read_text_lines

#: s3prl's ER classes, in output order (``exc`` is merged into ``hap``).
ER_CLASSES = ("neu", "hap", "ang", "sad")
IEMOCAP_ORDER_FILE = "iemocap_s3prl_order.tsv"


def iemocap_order_path():
    """Path of the packaged ``iemocap_s3prl_order.tsv``."""
    return str(importlib.resources.files("robustdistiller.downstream") / "package_data" / IEMOCAP_ORDER_FILE)


def read_iemocap_s3prl_order(path=None):
    """``[(utterance id, label), ...]`` of s3prl's IEMOCAP metadata, sessions 1 to 5, in s3prl's order.

    Arguments
    ---------
    path : str, optional
        A file in the same format (``<id><TAB><label>`` lines, ``#`` comments); default the packaged one.

    Raises
    ------
    ValueError
        A line that is not ``<id><TAB><label>`` (file and line number named).

    Example
    -------
    >>> order = read_iemocap_s3prl_order()
    >>> len(order), order[0]
    (5531, ('Ses01F_script02_2_F000', 'neu'))
    """
    path = path or iemocap_order_path()
    order = []
    for number, line in enumerate(read_text_lines(path, "s3prl order file"), start=1):  # non-UTF-8: file, line
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 2 or fields[1] not in ER_CLASSES:
            raise ValueError(
                f"{path}:{number}: expected '<utterance id><TAB><{'|'.join(ER_CLASSES)}>', got {line.rstrip()!r}"
            )
        order.append((fields[0], fields[1]))
    return order


def iemocap_s3prl_pool(test_session, path=None):
    """s3prl's training list of fold ``test_session``: ``[(id, label), ...]`` of the other sessions, in order.

    The session of an utterance is the digit of its ``SesNN`` prefix.

    Example
    -------
    >>> pool = iemocap_s3prl_pool(1)
    >>> len(pool), pool[0][0][:5], {utterance[:5] for utterance, _ in pool} == {"Ses02", "Ses03", "Ses04", "Ses05"}
    (4446, 'Ses02', True)
    """
    return [
        (utterance, label)
        for utterance, label in read_iemocap_s3prl_order(path)
        if int(utterance[3:5]) != int(test_session)
    ]


def read_s3prl_meta_data(meta_data_folder, test_session):
    """``[(id, label), ...]`` of s3prl's ``meta_data/Session<N>/train_meta_data.json``, in its order.

    Raises
    ------
    FileNotFoundError
        The JSON file is missing (named).
    ValueError
        It is not JSON, or has no ``meta_data`` list of ``{"path": ..., "label": ...}`` entries (named).
    robustdistiller.data.files.TextFileError
        A byte that is not UTF-8 (file and line named).
    """
    path = os.path.join(meta_data_folder, f"Session{test_session}", "train_meta_data.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"s3prl split file '{path}' not found (s3prl/downstream/emotion/meta_data/...)")
    try:
        content = json.loads(read_text(path, "s3prl split file"))
    except json.JSONDecodeError as error:
        raise ValueError(
            f"s3prl split file '{path}' is not JSON ({error}); expected s3prl's "
            f"downstream/emotion/meta_data/Session{test_session}/train_meta_data.json"
        ) from None
    try:
        return [
            (os.path.splitext(os.path.basename(item["path"]))[0], item.get("label")) for item in content["meta_data"]
        ]
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: expected {{'meta_data': [{{'path': ..., 'label': ...}}, ...]}}") from error
