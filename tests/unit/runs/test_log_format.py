"""robustdistiller.runs.log_format: readable result lines."""

import torch

from robustdistiller.runs.log_format import format_stats


def test_format_stats_four_significant_digits():
    line = format_stats({"error_rate": 0.0123456789012345, "loss": 1234.56789, "checkpoint": "CKPT+1", "n": 3})
    assert line == "error_rate=0.01235, loss=1235, checkpoint=CKPT+1, n=3"
    assert format_stats({"acc": torch.tensor(0.987654321)}) == "acc=0.9877"
