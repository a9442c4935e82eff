"""The registry of the twelve SUPERB tasks the report knows: recipe, YAML, primary metric, orientation, scale.

A recipe's ``results.json`` may name its own primary metric (``"primary_metric"``, ``"higher_is_better"``:
the signal tasks SD / SE / SS do); those keys win over the registry (:func:`primary_metric_of`).
"""

import dataclasses
import logging
import os

logger = logging.getLogger(__name__)

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPES_ROOT = os.path.join(REPOSITORY_ROOT, "recipes")

# How each metric is stored in results.json: "fraction" (0..1, shown in %), "percent" (0..100) or "raw"
# (its own unit: PESQ, dB). Error rates in percent are oriented as 100 - value in the cross-task summary.
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


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """One SUPERB task as the report runs and reads it.

    Attributes
    ----------
    name : str
        KS, IC, ...
    recipe : str
        Recipe folder under ``recipes/`` (``SpeechCommands/KS``).
    hparams : str
        The YAML, relative to the recipe folder.
    primary_metric : str
        The metric of the tables and the summary, as ``results.json`` names it.
    higher_is_better : bool
        Orientation of ``primary_metric``.
    secondary_metrics : tuple of str
        Other metrics worth a look (kept in ``report.json``).
    note : str
        Anything particular about the task's results (shown in ``report.md``).
    """

    name: str
    recipe: str
    hparams: str
    primary_metric: str
    higher_is_better: bool
    secondary_metrics: tuple = ()
    note: str = ""

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
        import ruamel.yaml

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
        TaskInfo("KS", "SpeechCommands/KS", "hparams/superb_ks.yaml", "accuracy", True),
        TaskInfo("IC", "FluentSpeechCommands/IC", "hparams/superb_ic.yaml", "accuracy", True,
                 note="accuracy: all three slots right"),
        TaskInfo("ER", "IEMOCAP/ER", "hparams/superb_er.yaml", "accuracy", True, ("accuracy_std",),
                 note="one test session per run (test_session); run_all_folds: True gives the mean over the "
                      "five folds in the pair's folder"),
        TaskInfo("SID", "VoxCeleb1/SID", "hparams/superb_sid.yaml", "accuracy", True),
        TaskInfo("ASV", "VoxCeleb1/ASV", "hparams/superb_asv.yaml", "EER", False, ("minDCF",)),
        TaskInfo("PR", "LibriSpeech/PR", "hparams/superb_pr.yaml", "PER", False),
        TaskInfo("ASR", "LibriSpeech/ASR", "hparams/superb_asr.yaml", "WER", False, ("CER",)),
        TaskInfo("SF", "SNIPS/SF", "hparams/superb_sf.yaml", "slot_type_f1", True, ("slot_value_cer",)),
        TaskInfo("QbE", "QUESST14/QbE", "hparams/superb_qbe.yaml", "mtwv", True, ("act_twv",)),
        TaskInfo("SD", "LibriMix/SD", "hparams/superb_sd.yaml", "DER", False, ("DER_best_on_test",)),
        TaskInfo("SE", "VoiceBank/SE", "hparams/superb_se.yaml", "PESQ", True, ("STOI", "SI_SDRi")),
        TaskInfo("SS", "LibriMix/SS", "hparams/superb_ss.yaml", "SI_SDRi", True),
    )
}


def get_task(name):
    """The :class:`TaskInfo` of ``name`` (KS, IC, ...); a ValueError lists the known tasks.

    Example
    -------
    >>> get_task("KS").recipe, get_task("ASV").higher_is_better
    ('SpeechCommands/KS', False)
    """
    if name not in TASKS:
        raise ValueError(f"Unknown task '{name}': the report knows {', '.join(TASKS)}")
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
