"""RobustDistiller: noise-robust knowledge distillation of self-supervised speech models.

The package holds everything the recipes share (``train.py`` with ``hparams/`` at the repository root, the
downstream recipes under ``recipes/``), one subpackage per concept:

- :mod:`robustdistiller.models`: the student (DistilHuBERT architecture + prediction heads), the frozen
  teacher, the enhancement head;
- :mod:`robustdistiller.data`: audio loading, data folder walking, corpus preparation (one module per corpus
  and the shared list toolkit), per-utterance corruption, batching, the data pipeline;
- :mod:`robustdistiller.distill`: the distillation Brain, the losses, held-out evaluation per corruption
  condition, enhancement quality (PESQ / STOI / SI-SNR);
- :mod:`robustdistiller.export`: loading trained students from any checkpoint form and exporting them
  (SpeechBrain + transformers folder, manifest, model card, verification, ONNX, s3prl);
  ``python -m robustdistiller.export``;
- :mod:`robustdistiller.inference`: the standalone SpeechBrain interface and the padding-safe transformers class
  and SpeechBrain lobe (copied into every export), and the torch-free ONNX Runtime encoder;
- :mod:`robustdistiller.runs`: run plumbing (atomic checkpoints, the run folder and its signature, command-line
  options, fingerprints, write errors);
- :mod:`robustdistiller.testing`: test data without downloads (speech synthesis, the mini corpus, miniature
  downstream corpora in their real layouts);
- :mod:`robustdistiller.downstream`: what the SUPERB downstream recipes share (upstreams, protocol, heads,
  Brain, one module per task family); ``python -m robustdistiller.downstream.lr_sweep``;
- :mod:`robustdistiller.dpwavlm`: DPWavLM and RobustDistiller + DPWavLM (prunable WavLM, two stages, export);
- :mod:`robustdistiller.report`: the cross-task robustness report; ``python -m robustdistiller.report``;
- :mod:`robustdistiller.demo`: ``make demo``;
- :mod:`robustdistiller.cli` and :mod:`robustdistiller.recipe_files`: the ``robustdistiller`` command and where the
  recipe files are (a checkout, or the copy a wheel ships).

The layout and the documentation: ``README.md`` and ``docs/``; what moved where: ``CHANGELOG.md``.
"""

import logging
import os

__version__ = "0.1.0"

TORCHVISION_NOTICE = "torchvision is not available - cannot save figures"
"""What SpeechBrain's ``train_logger`` logs at import without torchvision; no recipe saves figures with it."""


def _not_torchvision_notice(record):
    """Logging filter: drops exactly :data:`TORCHVISION_NOTICE`, keeps every other record."""
    return record.getMessage() != TORCHVISION_NOTICE


# Every recipe imports this package before SpeechBrain imports its train_logger (lazily, from the YAML).
_train_logger = logging.getLogger("speechbrain.utils.train_logger")
if _not_torchvision_notice not in _train_logger.filters:
    _train_logger.addFilter(_not_torchvision_notice)

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
