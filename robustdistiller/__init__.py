"""RobustDistiller: noise-robust knowledge distillation of self-supervised speech models.

The package holds everything the recipes share: the student and teacher models (:mod:`.student`,
:mod:`.teacher`), the enhancement head (:mod:`.enhancement`), the losses (:mod:`.losses`), the
per-utterance corruption pipeline (:mod:`.corruption`), audio loading (:mod:`.audio`), data
preparation (:mod:`.prepare`), the data pipeline and Brain subclass (:mod:`.dataio`, :mod:`.brain`),
the mini-corpus generator used by the demo and the tests (:mod:`.mini_corpus`), and the ways out of
training: the standalone SpeechBrain inference interface (:mod:`.interface`), checkpoint loading and
export for SpeechBrain and transformers (:mod:`.export`) and the s3prl checkpoint format
(:mod:`.s3prl_format`).
"""

import os

__version__ = "0.1.0"

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
"""The folder that holds this package (the repository root of a checkout)."""


def child_environment():
    """``os.environ`` with :data:`PACKAGE_PARENT` first on ``PYTHONPATH``: child processes (recipes, the
    eSpeak worker) import this package whether or not it is installed.

    Example
    -------
    >>> child_environment()["PYTHONPATH"].split(os.pathsep)[0] == PACKAGE_PARENT
    True
    """
    environment = dict(os.environ)
    paths = [PACKAGE_PARENT] + [path for path in environment.get("PYTHONPATH", "").split(os.pathsep) if path]
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return environment
