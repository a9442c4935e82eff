"""Room acoustics measures for RIR pools: RT60 by Schroeder integration, Sabine's RT60, SRB's severity bins.

- :func:`rt60` measures the reverberation time of an impulse response as ISO 3382-1 does: Schroeder's
  backward-integrated energy decay curve, a least-squares line over -5 to -35 dB (T30, the default) or
  -5 to -25 dB (T20), extrapolated to a 60 dB decay. No noise-floor compensation (Lundeby) is made, so
  a response must decay by 35 dB (T30) or 25 dB (T20) above its noise floor.
- :func:`sabine_rt60` is ``0.161 V / (S a)``: how Speech Robust Bench (``compute_rir_t60.py``) gives
  each RIRS_NOISES simulated RIR an RT60, from the room sizes and absorption in ``room_info``.
- :func:`severity_bins` bins values as Speech Robust Bench does for ``rir`` (RT60, four bins of equal
  width between the smallest and the largest RT60, a larger RT60 a higher severity) and ``real_rir``
  (SRMR, the same on a reversed scale: a smaller SRMR a higher severity). SRMR itself is not computed
  here (SRB uses the ``srmrpy`` package, not installed in this project); :func:`severity_bins` takes
  SRMR values computed elsewhere.

Sources: ``docs/reference/peer_distortions.md`` "Schroeder RT60" and "Speech Robust Bench's RIR bins".
"""

import numpy as np
import torch

DECAY_RANGES_DB = {"T20": (-5.0, -25.0), "T30": (-5.0, -35.0)}
"""Evaluation ranges of ISO 3382-1 on the energy decay curve (dB below the total energy)."""
MAX_NONLINEARITY_PERMILLE = 10.0
"""ISO 3382-1 Annex B's nonlinearity ``1000 (1 - r^2)`` of the fit above which the decay is not a line."""
SEVERITIES = (1, 2, 3, 4)
"""Speech Robust Bench's severities of ``rir`` / ``real_rir`` (severity 0, the clean one, is skipped)."""


def energy_decay_curve_db(rir):
    """Schroeder's backward integration of ``rir**2``, in dB relative to the total energy.

    Example
    -------
    >>> energy_decay_curve_db(np.array([1.0, 1.0, 0.0])).round(3).tolist()
    [0.0, -3.01, -inf]
    """
    energy = np.asarray(rir, dtype=np.float64) ** 2
    remaining = np.cumsum(energy[::-1])[::-1]
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(remaining / remaining[0])


def rt60(rir, sample_rate, method="T30", max_nonlinearity_permille=MAX_NONLINEARITY_PERMILLE):
    """Reverberation time (s) of an impulse response, by Schroeder integration (ISO 3382-1 T30 or T20).

    The decay curve starts at the response's largest absolute value (the direct sound); a line is
    fitted by least squares to it between -5 dB and -35 dB (T30) or -25 dB (T20) and the time it takes
    to fall by 60 dB is returned (twice T30's 30 dB, three times T20's 20 dB). A fit whose
    nonlinearity ``1000 (1 - r^2)`` exceeds ``max_nonlinearity_permille`` (a response cut before it
    has decayed, or one that reaches a noise floor) is refused.

    Arguments
    ---------
    rir : torch.Tensor or numpy.ndarray
        ``[time]`` (a ``[channels, time]`` input is measured on its first channel).
    sample_rate : int
        Hz.
    method : str
        ``"T30"`` or ``"T20"``.
    max_nonlinearity_permille : float or None
        Largest nonlinearity ``1000 (1 - r^2)`` of the fit accepted; None: any (a curved, double-slope
        decay then gets the slope of its best line).

    Returns
    -------
    float
        RT60 in seconds.

    Raises
    ------
    ValueError
        If the response is silent or does not decay through the whole evaluation range.

    Example
    -------
    >>> time = np.arange(16000) / 16000
    >>> decaying = np.exp(-3 * np.log(10) * time / 0.5)  # amplitude -60 dB at 0.5 s
    >>> round(rt60(decaying, 16000), 3)
    0.5
    """
    if method not in DECAY_RANGES_DB:
        raise ValueError(f"method must be one of {sorted(DECAY_RANGES_DB)}, got {method!r}.")
    if not (isinstance(sample_rate, (int, np.integer)) and sample_rate > 0):
        raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}.")
    response = rir.detach().cpu().double().numpy() if isinstance(rir, torch.Tensor) else np.asarray(rir, float)
    if response.ndim == 2:
        response = response[0]
    if response.ndim != 1 or response.size == 0 or not np.any(response):
        raise ValueError(f"rir must be a non-silent [time] response, got shape {response.shape}.")
    start = int(np.argmax(np.abs(response)))
    curve = energy_decay_curve_db(response[start:])
    upper, lower = DECAY_RANGES_DB[method]
    inside = np.nonzero((curve <= upper) & (curve >= lower))[0]
    if not np.any(curve < lower) or inside.size < 2:
        reached = float(np.min(curve[np.isfinite(curve)]))
        raise ValueError(
            f"The RIR's energy decays by {-reached:.1f} dB only; {method} needs it to fall below {lower} dB "
            "(a longer response, or one with less noise, is needed)."
        )
    times, levels = inside / sample_rate, curve[inside]
    slope, _ = np.polyfit(times, levels, 1)
    nonlinearity = 1000.0 * (1.0 - np.corrcoef(times, levels)[0, 1] ** 2)
    if slope >= 0 or (max_nonlinearity_permille is not None and nonlinearity > max_nonlinearity_permille):
        raise ValueError(
            f"The RIR's decay curve is not a straight line over {upper}..{lower} dB (nonlinearity "
            f"{nonlinearity:.1f} per mille, at most {max_nonlinearity_permille} allowed; slope {slope:.1f} dB/s): "
            f"the response is cut before it decays (T30 needs it to fall below {lower} dB) or has a noise floor."
        )
    return float(-60.0 / slope)


def sabine_rt60(length_m, width_m, height_m, absorption):
    """Sabine's reverberation time ``0.161 V / (S a)`` of a shoebox room (s), as SRB computes for RIRS_NOISES.

    Example
    -------
    >>> round(sabine_rt60(10.0, 5.0, 3.0, 0.5), 4)
    0.2542
    """
    if min(length_m, width_m, height_m) <= 0 or not 0 < absorption <= 1:
        raise ValueError(
            f"Room sizes must be positive and absorption in (0, 1], got {length_m, width_m, height_m, absorption}."
        )
    volume = length_m * width_m * height_m
    surface = 2 * (length_m * width_m + length_m * height_m + width_m * height_m)
    return 0.161 * volume / (surface * absorption)


def severity_edges(values, higher_is_worse=True):
    """The five bin edges SRB puts on a measure: ``linspace`` from best to worst of the distinct values.

    Example
    -------
    >>> severity_edges([0.2, 0.6, 1.0]).round(2).tolist()
    [0.2, 0.4, 0.6, 0.8, 1.0]
    """
    distinct = np.unique(np.asarray(values, dtype=np.float64))
    if distinct.size == 0 or not np.all(np.isfinite(distinct)):
        raise ValueError("severity_edges needs at least one finite value.")
    if higher_is_worse:
        return np.linspace(distinct.min(), distinct.max(), 5)
    return np.linspace(distinct.max(), distinct.min(), 5)


def severity_bins(values, higher_is_worse=True):
    """Severity 1-4 of each value as Speech Robust Bench bins ``rir`` (RT60) and ``real_rir`` (SRMR).

    ``rir`` (``higher_is_worse=True``, RT60): edges ``e = linspace(min, max, 5)``; severity ``s`` takes
    ``e[s-1] < value <= e[s]``; the smallest RT60 (``value == e[0]``) is in no bin (SRB's severity 0).
    ``real_rir`` (``higher_is_worse=False``, SRMR): edges ``e = linspace(max, min, 5)``; severity ``s``
    takes ``e[s] <= value < e[s-1]``; the largest SRMR is in no bin. Values in no bin get 0.

    Returns
    -------
    list of int
        The severity of each value, 0 for none.

    Example
    -------
    >>> severity_bins([0.2, 0.3, 0.45, 0.6, 1.0])
    [0, 1, 2, 2, 4]
    >>> severity_bins([10.0, 9.0, 2.0], higher_is_worse=False)
    [0, 1, 4]
    """
    edges = severity_edges(values, higher_is_worse)
    severities = []
    for value in np.asarray(values, dtype=np.float64):
        found = 0
        for severity in SEVERITIES:
            if higher_is_worse:
                inside = edges[severity - 1] < value <= edges[severity]
            else:
                inside = edges[severity] <= value < edges[severity - 1]
            if inside:
                found = severity
                break
        severities.append(found)
    return severities


__all__ = [
    "DECAY_RANGES_DB",
    "MAX_NONLINEARITY_PERMILLE",
    "SEVERITIES",
    "energy_decay_curve_db",
    "rt60",
    "sabine_rt60",
    "severity_bins",
    "severity_edges",
]
