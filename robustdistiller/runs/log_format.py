"""Results as console and log lines: a dict of numbers to a few significant digits (results files keep full
precision)."""


def format_stats(stats, digits=4):
    """A dict of results as one readable log line: numbers to ``digits`` significant digits.

    For console and log lines only; results files keep full precision.

    Example
    -------
    >>> format_stats({"loss": 0.123456789012345, "error_rate": 12.5, "epochs": 3, "checkpoint": "CKPT+x"})
    'loss=0.1235, error_rate=12.5, epochs=3, checkpoint=CKPT+x'
    >>> format_stats({"nested": {"pesq": 2.3456789}})
    'nested={pesq=2.346}'
    """
    parts = []
    for key, value in stats.items():
        if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # 0-d tensors and numpy scalars
            value = value.item()
        if isinstance(value, dict):
            text = "{" + format_stats(value, digits) + "}"
        elif isinstance(value, float):
            text = f"{value:.{digits}g}"
        else:
            text = str(value)
        parts.append(f"{key}={text}")
    return ", ".join(parts)
