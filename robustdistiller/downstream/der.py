"""Diarization output and its score: threshold + median decoding, RTTM files, DER, the decoding grid.

Used by the SD recipe (:mod:`robustdistiller.downstream.diarization`), usable on any RTTMs:

* :func:`median_filter`, :func:`decode_segments`: s3prl's ``make_rttm.py`` (threshold, then
  ``scipy.signal.medfilt`` per speaker, a segment per 0 -> 1 -> 0 run);
* :func:`read_rttm`, :func:`write_rttm`;
* :func:`diarization_error`: DER with collar 0 and overlapped speech scored = (missed + false alarm +
  speaker confusion) / total reference speaker time, optimal one-to-one speaker mapping (the
  Hungarian assignment on the overlap times, as NIST ``md-eval`` and ``pyannote.metrics``), computed
  exactly on a time grid (default 1 ms: exact for turns given in milliseconds, as the RTTMs are);
* :data:`DEFAULT_THRESHOLDS` x :data:`DEFAULT_MEDIANS` and :func:`score_grid` / :func:`best_setting`:
  s3prl reports the best of the 10 settings *on test* (an oracle); the recipe chooses it on clean dev
  and freezes it for every test condition; :func:`constant_baseline` (every speaker always active).
"""

import logging
import os

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
"""s3prl's decoding thresholds on the sigmoid posteriors (``score.sh``)."""
DEFAULT_MEDIANS = (1, 11)
"""s3prl's median-filter widths in frames (1: no filter)."""


def median_filter(activity, size):
    """``scipy.signal.medfilt`` of each speaker's 0/1 activity (zero-padded edges), as s3prl.

    Example
    -------
    >>> median_filter(np.array([[1, 0, 1, 1, 0, 0, 1, 0, 0]]).T, 3)[:, 0].tolist()
    [0, 1, 1, 1, 0, 0, 0, 0, 0]
    """
    activity = np.asarray(activity)
    if int(size) <= 1:
        return activity.copy()
    from scipy.signal import medfilt

    return np.stack(
        [medfilt(activity[:, column].astype(float), int(size)) for column in range(activity.shape[1])], axis=1
    ).astype(activity.dtype)


def decode_segments(posteriors, threshold=0.5, median=1, frame_seconds=0.02):
    """Speaker turns of a recording: threshold, median filter, a turn per run of active frames.

    Arguments
    ---------
    posteriors : numpy.ndarray
        ``[F, S]`` sigmoid outputs.
    threshold : float
        Active where the posterior is above it.
    median : int
        Median filter width in frames (1: none).
    frame_seconds : float
        Frame duration (``frame_shift / sample_rate``).

    Returns
    -------
    dict
        ``speaker index -> [(start_s, end_s), ...]`` (every speaker present, possibly empty).

    Example
    -------
    >>> decode_segments(np.array([[0.9, 0.1], [0.8, 0.9], [0.1, 0.9], [0.7, 0.2]]), 0.5, 1, 0.5)
    {0: [(0.0, 1.0), (1.5, 2.0)], 1: [(0.5, 1.5)]}
    """
    active = median_filter((np.asarray(posteriors) > threshold).astype(int), median)
    turns = {}
    for column in range(active.shape[1]):
        padded = np.concatenate([[0], active[:, column], [0]])
        changes = np.flatnonzero(np.diff(padded))
        turns[column] = [
            (round(float(start) * frame_seconds, 6), round(float(end) * frame_seconds, 6))
            for start, end in zip(changes[::2], changes[1::2])
        ]
    return turns


# -------------------------------------------------------------------------------------- RTTM ---


def write_rttm(path, recordings):
    """Writes RTTM lines ``SPEAKER <file> 1 <start> <duration> <NA> <NA> <speaker> <NA> <NA>``.

    Arguments
    ---------
    path : str
        Output file (folders created).
    recordings : dict
        ``file id -> {speaker: [(start_s, end_s), ...]}``; files and turns are written sorted.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fout:
        for file_id in sorted(recordings):
            lines = [
                (start, end, str(speaker))
                for speaker, turns in recordings[file_id].items()
                for start, end in turns
                if end > start
            ]
            for start, end, speaker in sorted(lines):
                fout.write(f"SPEAKER {file_id} 1 {start:.3f} {end - start:.3f} <NA> <NA> {speaker} <NA> <NA>\n")


def read_rttm(path):
    """``file id -> {speaker: [(start_s, end_s), ...]}`` of an RTTM file (``SPEAKER`` lines; 9 or 10 fields).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "x.rttm")
    >>> write_rttm(path, {"rec": {"7976": [(0.37, 8.71)], "19": [(1.0, 2.5), (0.0, 0.5)]}})
    >>> open(path).readline().split()[:5], read_rttm(path)
    (['SPEAKER', 'rec', '1', '0.000', '0.500'], {'rec': {'19': [(0.0, 0.5), (1.0, 2.5)], '7976': [(0.37, 8.71)]}})
    """
    recordings = {}
    with open(path, encoding="utf-8") as fin:
        for number, line in enumerate(fin, start=1):
            fields = line.split()
            if not fields or fields[0] != "SPEAKER":
                continue
            if len(fields) < 8:
                raise ValueError(
                    f"{path} line {number}: an RTTM SPEAKER line needs at least 8 fields "
                    f"(SPEAKER <file> <chnl> <start> <dur> <NA> <NA> <speaker> ...), got {line!r}"
                )
            start, duration = float(fields[3]), float(fields[4])
            turns = recordings.setdefault(fields[1], {}).setdefault(fields[7], [])
            turns.append((round(start, 6), round(start + duration, 6)))
    for speakers in recordings.values():
        for turns in speakers.values():
            turns.sort()
    return recordings


# ----------------------------------------------------------------------------------- scoring ---


def _activity(turns_by_speaker, num_steps, resolution):
    speakers = sorted(turns_by_speaker, key=str)
    activity = np.zeros((num_steps, len(speakers)), dtype=bool)
    for column, speaker in enumerate(speakers):
        for start, end in turns_by_speaker[speaker]:
            activity[int(round(start / resolution)) : int(round(end / resolution)), column] = True
    return activity


def score_recording(reference, hypothesis, resolution=0.001):
    """Missed, false-alarm and confusion speaker time (s) and the reference speaker time of one file.

    Collar 0, overlap scored; the speakers are mapped one-to-one to maximise the overlap time
    (``scipy.optimize.linear_sum_assignment``), as NIST ``md-eval`` and ``pyannote.metrics`` do. Each
    turn boundary is rounded to the grid (``resolution`` seconds), so the result is exact for turns on
    that grid.

    Arguments
    ---------
    reference, hypothesis : dict
        ``speaker -> [(start_s, end_s), ...]`` (overlapping turns of one speaker count once).
    resolution : float
        Grid step in seconds.

    Returns
    -------
    dict
        ``missed``, ``false_alarm``, ``confusion``, ``total`` (seconds).
    """
    from scipy.optimize import linear_sum_assignment

    ends = [end for turns in (*reference.values(), *hypothesis.values()) for _, end in turns]
    num_steps = int(round(max(ends, default=0.0) / resolution)) + 1
    ref = _activity(reference, num_steps, resolution)
    hyp = _activity(hypothesis, num_steps, resolution)
    n_ref, n_hyp = ref.sum(axis=1), hyp.sum(axis=1)
    correct = 0
    if ref.shape[1] and hyp.shape[1]:
        overlap = ref.T.astype(np.int64) @ hyp.astype(np.int64)  # [R, H] steps both active
        rows, columns = linear_sum_assignment(-overlap)
        correct = int(overlap[rows, columns].sum())
    steps = {
        "missed": int(np.maximum(n_ref - n_hyp, 0).sum()),
        "false_alarm": int(np.maximum(n_hyp - n_ref, 0).sum()),
        "confusion": int(np.minimum(n_ref, n_hyp).sum()) - correct,
        "total": int(n_ref.sum()),
    }
    return {name: value * resolution for name, value in steps.items()}


def diarization_error(references, hypotheses, resolution=0.001):
    """DER (percent) with its parts over a set of recordings: ``(missed + FA + confusion) / total``.

    Arguments
    ---------
    references, hypotheses : dict
        ``file id -> {speaker: [(start_s, end_s), ...]}``; a file without hypothesis has no sys turns.
    resolution : float
        Grid step in seconds (see :func:`score_recording`).

    Returns
    -------
    dict
        ``DER``, ``miss``, ``false_alarm``, ``confusion`` (percent of the reference speaker time) and
        the times in seconds (``missed_s``, ``false_alarm_s``, ``confusion_s``, ``total_s``).

    Example
    -------
    >>> reference = {"f": {"A": [(0.0, 2.0)], "B": [(1.0, 3.0)]}}
    >>> hypothesis = {"f": {"x": [(0.0, 1.0)], "y": [(1.0, 3.0)], "z": [(3.0, 4.0)]}}
    >>> scored = diarization_error(reference, hypothesis)
    >>> {key: round(value, 2) for key, value in scored.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'DER': 50.0, 'miss': 25.0, 'false_alarm': 25.0, 'confusion': 0.0, 'missed_s': 1.0, 'false_alarm_s': 1.0,
     'confusion_s': 0.0, 'total_s': 4.0}
    """
    sums = {"missed": 0.0, "false_alarm": 0.0, "confusion": 0.0, "total": 0.0}
    for file_id in sorted(set(references) | set(hypotheses)):
        scored = score_recording(references.get(file_id, {}), hypotheses.get(file_id, {}), resolution)
        for key in sums:
            sums[key] += scored[key]
    total = sums["total"]

    def percent(value):
        return 100.0 * value / total if total > 0 else 0.0

    return {
        "DER": percent(sums["missed"] + sums["false_alarm"] + sums["confusion"]),
        "miss": percent(sums["missed"]),
        "false_alarm": percent(sums["false_alarm"]),
        "confusion": percent(sums["confusion"]),
        "missed_s": sums["missed"],
        "false_alarm_s": sums["false_alarm"],
        "confusion_s": sums["confusion"],
        "total_s": total,
    }


def setting_name(threshold, median):
    """Key of a decoding setting, e.g. ``t0.5_m11``."""
    return f"t{threshold:g}_m{int(median)}"


def decode_all(posteriors, threshold, median, frame_seconds):
    """``file id -> turns`` (speakers named ``<file>_<index>``, as s3prl) of every recording's posteriors."""
    return {
        file_id: {
            f"{file_id}_{index}": turns
            for index, turns in decode_segments(probs, threshold, median, frame_seconds).items()
        }
        for file_id, probs in posteriors.items()
    }


def score_grid(
    posteriors, references, thresholds=DEFAULT_THRESHOLDS, medians=DEFAULT_MEDIANS, frame_seconds=0.02, resolution=0.001
):
    """DER (and its parts) of every ``threshold x median`` setting.

    Arguments
    ---------
    posteriors : dict
        ``file id -> [F, S]`` sigmoid outputs.
    references : dict
        ``file id -> {speaker: [(start_s, end_s), ...]}``.

    Returns
    -------
    dict
        ``setting_name -> {"threshold", "median", **diarization_error(...)}``, in grid order.
    """
    grid = {}
    for threshold in thresholds:
        for median in medians:
            hypotheses = decode_all(posteriors, threshold, median, frame_seconds)
            grid[setting_name(threshold, median)] = {
                "threshold": float(threshold),
                "median": int(median),
                **diarization_error(references, hypotheses, resolution),
            }
    return grid


def best_setting(grid):
    """The setting of lowest DER (the first in grid order on ties).

    Example
    -------
    >>> best_setting({"t0.3_m1": {"DER": 20.0}, "t0.4_m1": {"DER": 10.0}, "t0.5_m1": {"DER": 10.0}})
    't0.4_m1'
    """
    return min(grid, key=lambda name: grid[name]["DER"])


def constant_baseline(references, durations, resolution=0.001):
    """DER of the "both speakers always active" system (every speaker on the whole recording).

    Arguments
    ---------
    references : dict
        ``file id -> {speaker: turns}``.
    durations : dict
        ``file id -> seconds``.

    Example
    -------
    >>> round(constant_baseline({"f": {"A": [(0.0, 1.0)], "B": [(0.0, 2.0)]}}, {"f": 2.0})["DER"], 2)
    33.33
    """
    hypotheses = {
        file_id: {speaker: [(0.0, durations[file_id])] for speaker in speakers}
        for file_id, speakers in references.items()
    }
    return diarization_error(references, hypotheses, resolution)
