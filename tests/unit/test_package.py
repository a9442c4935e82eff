"""robustdistiller/__init__.py: the package-wide console settings."""

import logging
import subprocess
import sys

import robustdistiller


def test_torchvision_notice_silenced_other_train_logger_records_kept():
    code = (
        "import logging, robustdistiller, speechbrain.utils.train_logger\n"
        "logging.getLogger('speechbrain.utils.train_logger').warning('other warning')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=robustdistiller.child_environment()
    )
    assert result.returncode == 0, result.stderr
    assert robustdistiller.TORCHVISION_NOTICE not in result.stderr
    assert "other warning" in result.stderr
    record = logging.LogRecord("speechbrain.utils.train_logger", logging.WARNING, "", 0, "other", None, None)
    assert logging.getLogger("speechbrain.utils.train_logger").filter(record)
