"""The registry of the downstream tasks: one row per recipe, read by the report and by the protocol tests.

A row (:class:`TaskInfo`) says where a task's recipe is (``recipes/<Dataset>/<Task>/``, its YAML), which
metric the report tables and summarises (and whether higher is better), and s3prl's training budget for
it (:class:`S3prlBudget`, ``docs/reference/s3prl_settings.md`` "Step budgets"), which
``tests/consistency/test_protocol_fidelity.py`` checks the YAML against. Adding a task is its recipe folder plus one
row of :data:`TASKS` (``recipes/README.md``).

A recipe's ``results.json`` may name its own primary metric (``"primary_metric"``, ``"higher_is_better"``:
the signal tasks SD / SE / SS do); those keys win over the registry (:func:`primary_metric_of`).
Checkpoint selection is not here: it is the recipe YAML's ``selection_metric`` / ``selection_mode``
(:attr:`robustdistiller.downstream.brain.DownstreamBrain.best_checkpoint_key`), the dev metric s3prl
selects on, which is not always the reported one (SD selects on frame accuracy, reports DER).
"""

import dataclasses
import os
from typing import Optional, Tuple

import ruamel.yaml
import torch

from robustdistiller.recipe_files import recipe_root

REPOSITORY_ROOT = recipe_root()
"""The folder of ``recipes/`` (a checkout's root, or the copy an installed wheel ships)."""
RECIPES_ROOT = os.path.join(REPOSITORY_ROOT, "recipes")

# How each metric is stored in results.json: "fraction" (0..1, shown in %), "percent" (0..100) or "raw"
# (its own unit: PESQ, dB). Error rates in percent are oriented as 100 - value in the cross-task summary.
# A task whose primary metric is not here yet adds it (tests/consistency/test_protocol_fidelity.py checks every row).
METRIC_SCALES = {
    "accuracy": "fraction",  # KS, IC, ER, SID
    "EER": "percent",  # ASV (write_condition_results notes "EER in percent")
    "minDCF": "raw",
    "PER": "percent",  # SpeechBrain ErrorRateStats: percent
    "WER": "percent",
    "CER": "percent",
    "slot_type_f1": "fraction",  # SF (robustdistiller.downstream.slot_filling: fractions)
    "slot_value_cer": "fraction",
    "mtwv": "fraction",  # QbE
    "DER": "percent",  # SD
    "DER_best_on_test": "percent",
    "PESQ": "raw",  # SE
    "STOI": "raw",
    "SI_SDRi": "raw",  # SE, SS (dB)
}

TORCH_ADAMW_DEFAULT_WEIGHT_DECAY = 0.01


@dataclasses.dataclass(frozen=True)
class S3prlBudget:
    """s3prl's effective training settings of a task (``docs/reference/s3prl_settings.md`` "Step budgets").

    Attributes
    ----------
    optimizer : type or None
        The optimizer class; None: the task trains nothing (QbE).
    lr : float
        s3prl's default learning rate.
    effective_batch : tuple of int
        The accepted batch x accumulation products.
    clip : float
        Gradient-norm clipping.
    updates : int
        Optimizer updates.
    weight_decay : float, optional
        Checked where the optimizer is AdamW.
    train_utterances : int, optional
        Size of the full training set, for the check that ``number_of_epochs`` can reach ``updates``.
    note : str
        What the numbers mean for this task (shown when the check fails).
    """

    optimizer: Optional[type] = torch.optim.Adam
    lr: float = 1e-4
    effective_batch: Tuple[int, ...] = (32,)
    clip: float = 1.0
    updates: int = 200_000
    weight_decay: Optional[float] = None
    train_utterances: Optional[int] = None
    note: str = ""


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """One downstream task: its recipe, its reported metric, s3prl's budget.

    Attributes
    ----------
    name : str
        KS, IC, ... (the report's and the spec's name of the task).
    recipe : str
        Recipe folder under ``recipes/`` (``SpeechCommands/KS``).
    hparams : str
        The YAML, relative to the recipe folder.
    primary_metric : str
        The metric of the tables and the summary, as ``results.json`` names it (a key of :data:`METRIC_SCALES`).
    higher_is_better : bool
        Orientation of ``primary_metric``.
    s3prl : S3prlBudget
        s3prl's training settings, checked against the YAML by ``tests/consistency/test_protocol_fidelity.py``.
    secondary_metrics : tuple of str
        Other metrics worth a look (kept in ``report.json``).
    note : str
        Anything particular about the task's results (shown in ``report.md``).
    chance : float, optional
        The primary metric of a uniform random guess, in the metric's stored scale (KS: 1/12 accuracy;
        ASV: 50 % EER); None where no single chance level exists (error rates of sequences, PESQ...). The report
        draws it as a dashed line.
    """

    name: str
    recipe: str
    hparams: str
    primary_metric: str
    higher_is_better: bool
    s3prl: S3prlBudget = S3prlBudget()
    secondary_metrics: tuple = ()
    note: str = ""
    chance: Optional[float] = None

    @property
    def recipe_folder(self):
        """Absolute recipe folder."""
        return os.path.join(RECIPES_ROOT, self.recipe)

    @property
    def train_script(self):
        """Absolute path of the recipe's ``train.py``."""
        return os.path.join(self.recipe_folder, "train.py")

    @property
    def hparams_file(self):
        """Absolute path of the recipe's YAML."""
        return os.path.join(self.recipe_folder, self.hparams)

    @property
    def condition_names(self):
        """The condition names the recipe's YAML defines: ``release_conditions`` (SD, SE, SS), then
        ``test_conditions`` (``["clean"]`` when the YAML cannot be read).

        Example
        -------
        >>> get_task("SE").condition_names[:3], get_task("KS").condition_names[:2]
        (['official', 'clean', 'snr20'], ['clean', 'snr20'])
        """
        try:
            with open(self.hparams_file, encoding="utf-8") as fin:
                content = ruamel.yaml.YAML().load(fin) or {}
        except (OSError, ruamel.yaml.YAMLError):
            return ["clean"]
        names = list(content.get("release_conditions") or {}) + list(content.get("test_conditions") or {})
        return [str(name) for name in names] or ["clean"]

    def spec_conditions(self, conditions):
        """The names of ``conditions`` (a spec's list) that this recipe defines, in the spec's order
        (a spec for several tasks names e.g. SE's ``official`` beside the shared conditions)."""
        known = self.condition_names
        return [name for name in conditions if name in known]


TASKS = {
    task.name: task
    for task in (
        TaskInfo(
            "KS",
            "SpeechCommands/KS",
            "hparams/superb_ks.yaml",
            "accuracy",
            True,
            S3prlBudget(train_utterances=51_424, note="1,607 steps per epoch at batch 32"),
            chance=1 / 12,  # 10 words, _unknown_, _silence_
        ),
        TaskInfo(
            "IC",
            "FluentSpeechCommands/IC",
            "hparams/superb_ic.yaml",
            "accuracy",
            True,
            S3prlBudget(train_utterances=23_132),
            note="accuracy: all three slots right",
            chance=1 / 31,  # a uniform guess among the corpus's 31 intents
        ),
        TaskInfo(
            "ER",
            "IEMOCAP/ER",
            "hparams/superb_er.yaml",
            "accuracy",
            True,
            S3prlBudget(
                updates=30_000, train_utterances=3_400, note="4 x 8; the smallest fold trains on ~3,400 utterances"
            ),
            ("accuracy_std",),
            note="one test session per run (test_session); run_all_folds: True gives the mean over the "
            "five folds in the pair's folder",
            chance=1 / 4,
        ),
        TaskInfo(
            "SID",
            "VoxCeleb1/SID",
            "hparams/superb_sid.yaml",
            "accuracy",
            True,
            S3prlBudget(train_utterances=138_361, note="8 x 4"),
            chance=1 / 1251,  # VoxCeleb1's 1,251 speakers
        ),
        TaskInfo(
            "ASV",
            "VoxCeleb1/ASV",
            "hparams/superb_asv.yaml",
            "EER",
            False,
            S3prlBudget(
                optimizer=torch.optim.AdamW,
                effective_batch=(50,),
                clip=1000.0,
                weight_decay=TORCH_ADAMW_DEFAULT_WEIGHT_DECAY,
                train_utterances=143_000,
                note="10 x 5; 1,171 training speakers after 40 held out",
            ),
            ("minDCF",),
            chance=50.0,  # EER of random scores
        ),
        TaskInfo(
            "PR",
            "LibriSpeech/PR",
            "hparams/superb_pr.yaml",
            "PER",
            False,
            S3prlBudget(lr=1e-2, updates=100_000, train_utterances=28_539, note="16 x 2, bucketed"),
        ),
        TaskInfo(
            "ASR",
            "LibriSpeech/ASR",
            "hparams/superb_asr.yaml",
            "WER",
            False,
            S3prlBudget(
                effective_batch=(32, 16),
                train_utterances=28_539,
                note="32 nominal, 16 by s3prl's HALF_BATCHSIZE_TIME quirk",
            ),
            ("CER",),
        ),
        TaskInfo("SF", "SNIPS/SF", "hparams/superb_sf.yaml", "slot_type_f1", True, S3prlBudget(), ("slot_value_cer",)),
        TaskInfo(
            "QbE",
            "QUESST14/QbE",
            "hparams/superb_qbe.yaml",
            "mtwv",
            True,
            S3prlBudget(optimizer=None, note="no training"),
            ("act_twv",),
        ),
        TaskInfo(
            "SD",
            "LibriMix/SD",
            "hparams/superb_sd.yaml",
            "DER",
            False,
            S3prlBudget(updates=30_000, note="8 x 4"),
            ("DER_best_on_test",),
        ),
        TaskInfo(
            "SE",
            "VoiceBank/SE",
            "hparams/superb_se.yaml",
            "PESQ",
            True,
            S3prlBudget(
                optimizer=torch.optim.AdamW,
                effective_batch=(8,),
                updates=150_000,
                weight_decay=0.0,
                note="s3prl's AdamW: weight decay 0",
            ),
            ("STOI", "SI_SDRi"),
        ),
        TaskInfo(
            "SS",
            "LibriMix/SS",
            "hparams/superb_ss.yaml",
            "SI_SDRi",
            True,
            S3prlBudget(
                optimizer=torch.optim.AdamW,
                effective_batch=(8,),
                updates=150_000,
                weight_decay=0.0,
                note="s3prl's AdamW: weight decay 0",
            ),
        ),
    )
}
"""Every downstream task, by name: the one list of tasks (the report, the protocol tests and the docs read it)."""


def get_task(name):
    """The :class:`TaskInfo` of ``name`` (KS, IC, ...); a ValueError lists the known tasks.

    Example
    -------
    >>> get_task("KS").recipe, get_task("ASV").higher_is_better
    ('SpeechCommands/KS', False)
    """
    if name not in TASKS:
        raise ValueError(
            f"Unknown task '{name}': the registry (robustdistiller/downstream/tasks.py) knows {', '.join(TASKS)}"
        )
    return TASKS[name]


def primary_metric_of(task, results=None):
    """``(metric name, higher_is_better, scale)`` of a task's run: ``results.json``'s own keys first.

    Example
    -------
    >>> primary_metric_of(get_task("PR"))
    ('PER', False, 'percent')
    >>> primary_metric_of(get_task("SE"), {"primary_metric": "STOI", "higher_is_better": True})
    ('STOI', True, 'raw')
    """
    results = results or {}
    metric = results.get("primary_metric") or task.primary_metric
    higher = results.get("higher_is_better")
    if higher is None:
        higher = task.higher_is_better if metric == task.primary_metric else True
    return metric, bool(higher), METRIC_SCALES.get(metric, "raw")
