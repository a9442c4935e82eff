"""Shared framework of the SUPERB downstream recipes (``recipes/<Dataset>/<Task>/train.py``).

Every recipe evaluates a *frozen* upstream with a small task head on a learnable softmax-weighted sum
of the upstream's hidden layers (``docs/reference/superb_tasks.md`` "Protocol"), on clean and corrupted test sets. One
module per idea:

* :mod:`~robustdistiller.downstream.tasks`: the registry of the tasks (recipe, YAML, reported metric and its
  direction, s3prl's budget), read by the report and the protocol tests (``recipes/README.md``: adding a task);
* :mod:`~robustdistiller.downstream.upstream`: :class:`FrozenUpstream` (any upstream kind, frozen), its
  identity and :func:`upstream_name`;
* :mod:`~robustdistiller.downstream.protocol`: test conditions, test-only corruption lists, corruptors;
* :mod:`~robustdistiller.downstream.data`: audio pipelines (corruption seeded by the utterance id);
* :mod:`~robustdistiller.downstream.heads`: :class:`WeightedLayerSum`, masked pooling;
* :mod:`~robustdistiller.downstream.brain`: :class:`DownstreamBrain`, the best checkpoint from the YAML's
  ``selection_metric`` / ``selection_mode``, and the condition loop;
* :mod:`~robustdistiller.downstream.results`: ``results.json`` / ``results.md``;
* :mod:`~robustdistiller.downstream.run`: :func:`start_run` (options, output-folder lock, upstream identity);
* :mod:`~robustdistiller.downstream.signal`: data of the signal tasks (SD, SE, SS): inputs as
  released or the sum of the sources, targets scaled by the corruption's gain, release conditions;
* task families: :mod:`~robustdistiller.downstream.classification` (KS, IC, ER, SID),
  :mod:`~robustdistiller.downstream.ctc` (PR, ASR, SF: vocabularies, greedy CTC decoding, the BiLSTM
  CTC head, SpecAugment on features, the CTC Brain), :mod:`~robustdistiller.downstream.slot_filling`
  (SF targets and s3prl's slot metrics), :mod:`~robustdistiller.downstream.qbe` (QbE: subsequence DTW,
  MTWV, stdlist files), :mod:`~robustdistiller.downstream.separation` (SE, SS: the SepRNN mask head,
  NPSM, uPIT, s3prl's zero-mean SI-SDR, the masking Brain), :mod:`~robustdistiller.downstream.diarization` (SD:
  frame labels, PIT BCE) with :mod:`~robustdistiller.downstream.der` (decoding, RTTM, DER);
* task data: :mod:`~robustdistiller.downstream.librispeech` (PR / ASR lists and lexicons),
  :mod:`~robustdistiller.downstream.silence` (sox-equivalent silence removal, ASV);
* :mod:`~robustdistiller.downstream.lr_sweep`: the learning-rate search SUPERB needs per task and upstream.

Where a Brain lives (``recipes/README.md``): a Brain that several recipes share is here, in its family's module
(:class:`UtteranceClassificationBrain` for KS, ER, SID; ``MaskingBrain`` for SE, SS; the base ``CTCBrain`` of PR,
ASR, SF); the Brain of a single task is in that recipe's ``train.py`` (IC, ASV, PR, ASR, SF, SD), as in
SpeechBrain's recipes.

The names below are re-exported so that recipes and YAMLs can use ``robustdistiller.downstream.X``.
"""

from robustdistiller.downstream.brain import SELECTION_MODES, DownstreamBrain, checkpoint_selection
from robustdistiller.downstream.classification import UtteranceClassificationBrain, classification_datasets
from robustdistiller.downstream.data import (
    AudioPipeline,
    audio_dataset,
    condition_test_set_factory,
    recipe_datasets,
    training_pipeline,
)
from robustdistiller.downstream.heads import WeightedLayerSum, masked_mean
from robustdistiller.downstream.protocol import (
    DEFAULT_TEST_CONDITIONS,
    build_corruptor,
    build_corruptors,
    prepare_corruption_lists,
    prepare_test_corruption,
    select_conditions,
)
from robustdistiller.downstream.results import format_results_table, write_condition_results
from robustdistiller.downstream.run import LIST_OPTIONS, check_downstream_options, start_run
from robustdistiller.downstream.upstream import (
    IDENTITY_FIELDS,
    UPSTREAM_IDENTITY_FILE,
    UPSTREAM_KINDS,
    FrozenUpstream,
    UpstreamChangedError,
    check_upstream_identity,
    read_upstream_identity,
    upstream_name,
)

__all__ = [
    "AudioPipeline",
    "DEFAULT_TEST_CONDITIONS",
    "DownstreamBrain",
    "FrozenUpstream",
    "IDENTITY_FIELDS",
    "LIST_OPTIONS",
    "SELECTION_MODES",
    "UPSTREAM_IDENTITY_FILE",
    "UPSTREAM_KINDS",
    "UpstreamChangedError",
    "UtteranceClassificationBrain",
    "WeightedLayerSum",
    "audio_dataset",
    "build_corruptor",
    "build_corruptors",
    "check_downstream_options",
    "check_upstream_identity",
    "checkpoint_selection",
    "classification_datasets",
    "condition_test_set_factory",
    "format_results_table",
    "masked_mean",
    "prepare_corruption_lists",
    "prepare_test_corruption",
    "read_upstream_identity",
    "recipe_datasets",
    "select_conditions",
    "start_run",
    "training_pipeline",
    "upstream_name",
    "write_condition_results",
]
