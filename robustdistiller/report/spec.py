"""The report's spec (a YAML file): upstreams, tasks, conditions, data folders, overrides, output root, mode.

Example spec (``recipes/report_example.yaml`` is a complete one)::

    output_root: results/report          # each pair -> <output_root>/<TASK>/<upstream name>
    mode: run                            # run | print | report
    upstreams:                           # name -> source, or name -> {source, kind, other upstream_* options}
      wavlm-base-plus: microsoft/wavlm-base-plus
      robust: {source: /runs/robust/exported, kind: student}
    tasks: [KS, PR]                      # any of robustdistiller.downstream.tasks.TASKS
    conditions: [clean, snr5, reverb]    # null: all the conditions each recipe runs
    test_protocol: [robustdistiller, huang2022]   # optional: test presets (docs/test_protocols.md)
    corruption:                          # shared by every task (test_* options)
      test_musan_folder: /data/musan
      test_rir_folder: /data/RIRS_NOISES
    data:                                # per task: the recipe's own data options
      KS: {data_folder: /data/speech_commands_v0.01, test_folder: /data/speech_commands_test_set_v0.01}
      PR: {data_folder: /data/LibriSpeech}
    overrides:                           # optional: "all" (every task) and per task
      all: {}
      KS: {lr: 0.0001}

Nothing in a spec is dropped silently: a key given twice in one mapping (an upstream named twice, which
YAML would reduce to the last) and a condition that no task of the spec defines are refused with a
:class:`SpecError` naming them.
"""

import dataclasses
import logging
import os
import re
import sys

import yaml

from robustdistiller.downstream.protocol import DEFAULT_TEST_CONDITIONS
from robustdistiller.downstream.protocols import DEFAULT_PROTOCOL, PRESET_NAMES, load_preset, preset_test_conditions
from robustdistiller.downstream.tasks import get_task

logger = logging.getLogger(__name__)

MODES = ("run", "print", "report")
SPEC_KEYS = (
    "output_root",
    "mode",
    "upstreams",
    "tasks",
    "conditions",
    "corruption",
    "data",
    "overrides",
    "python",
    "score_references",
    "test_protocol",
)
UPSTREAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# Options the report sets itself for every pair.
RESERVED_OVERRIDES = ("output_folder", "upstream_source")


class SpecError(ValueError):
    """A spec that cannot be run; the message names the spec file and the key at fault."""


@dataclasses.dataclass
class Pair:
    """One (task, upstream) run of a spec.

    Attributes
    ----------
    task : robustdistiller.downstream.tasks.TaskInfo
    upstream : str
        The upstream's name in the spec.
    output_folder : str
        ``<output_root>/<TASK>/<upstream>`` (absolute).
    overrides : dict
        Every ``--key=value`` the recipe gets (``output_folder`` included).
    protocol : str
        The test protocol (``test_protocol``); pairs of another protocol than ``robustdistiller`` run in
        ``<output_root>/<protocol>/<TASK>/<upstream>``.
    """

    task: object
    upstream: str
    output_folder: str
    overrides: dict
    protocol: str = DEFAULT_PROTOCOL

    @property
    def label(self):
        """``TASK/upstream``."""
        label = f"{self.task.name}/{self.upstream}"
        return label if self.protocol == DEFAULT_PROTOCOL else f"{self.protocol}/{label}"


@dataclasses.dataclass
class ReportSpec:
    """A checked spec (:func:`load_spec`)."""

    path: str
    output_root: str
    mode: str
    upstreams: dict  # name -> {upstream_source: ..., upstream_kind: ..., ...}
    tasks: list  # TaskInfo
    conditions: list  # or None: all of each recipe
    corruption: dict
    data: dict
    overrides: dict
    python: str
    score_references: dict
    test_protocols: list = dataclasses.field(default_factory=lambda: [DEFAULT_PROTOCOL])

    @property
    def report_folder(self):
        """``<output_root>/report``: everything the report writes."""
        return os.path.join(self.output_root, "report")

    @property
    def log_folder(self):
        """``<output_root>/logs``: one log per pair run by the report."""
        return os.path.join(self.output_root, "logs")

    def log_file(self, pair):
        """``<output_root>/logs/<TASK>/<upstream>.log``."""
        return os.path.join(self.log_folder, pair.task.name, f"{pair.upstream}.log")

    def pairs(self):
        """Every (protocol, task, upstream) :class:`Pair`: protocols, tasks, then upstreams in spec order."""
        return [
            self.pair(task, name, protocol)
            for protocol in self.test_protocols
            for task in self.tasks
            for name in self.upstreams
        ]

    def pair(self, task, upstream, protocol=None):
        """The :class:`Pair` of ``task`` (TaskInfo), ``upstream`` (its spec name) and ``protocol``
        (default: the spec's first)."""
        protocol = protocol or self.test_protocols[0]
        output_folder = os.path.join(self.output_root, task.name, upstream)
        overrides = {}
        if protocol != DEFAULT_PROTOCOL:  # the default keeps the folders and options of earlier reports
            output_folder = os.path.join(self.output_root, protocol, task.name, upstream)
            overrides["test_protocol"] = protocol
        overrides.update(self.corruption)
        overrides.update(self.data.get(task.name, {}))
        if self.conditions is not None:
            overrides["test_condition_names"] = protocol_conditions(task, protocol, self.conditions)
        overrides.update(self.upstreams[upstream])
        overrides.update(self.overrides.get("all", {}))
        overrides.update(self.overrides.get(task.name, {}))
        overrides["output_folder"] = output_folder
        return Pair(task, upstream, output_folder, overrides, protocol)


def protocol_conditions(task, protocol, conditions=None):
    """The condition names ``task`` runs under ``protocol``, restricted to ``conditions`` (a spec's list) if given.

    Example
    -------
    >>> protocol_conditions(get_task("KS"), "huang2022")
    ['clean', '2dis', 'dns', 'fsd50k']
    >>> protocol_conditions(get_task("KS"), "robustdistiller", ["snr5", "2dis"])
    ['snr5']
    """
    if protocol == DEFAULT_PROTOCOL:
        known = task.condition_names
    else:
        released = [name for name in task.condition_names if name not in DEFAULT_TEST_CONDITIONS]  # SE's official...
        known = released + list(preset_test_conditions(load_preset(protocol)))
    return known if conditions is None else [name for name in conditions if name in known]


def _mapping(value, key, path):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"{path}: `{key}` must be a mapping, got {type(value).__name__} ({value!r})")
    return dict(value)


def _upstream_options(name, value, path):
    """``name: source`` or ``name: {source, kind, ...}`` -> ``{upstream_source, upstream_kind, ...}``."""
    if isinstance(value, (str, os.PathLike)):
        value = {"source": os.fspath(value)}
    if not isinstance(value, dict) or not value.get("source"):
        raise SpecError(
            f"{path}: upstream '{name}' needs a source: `{name}: <source>` or "
            f"`{name}: {{source: <source>, kind: ...}}`, got {value!r}"
        )
    options = {}
    for key, option in value.items():
        key = str(key)
        options[key if key.startswith("upstream_") else f"upstream_{key}"] = option
    return options


def load_spec(path, mode=None):
    """Reads and checks a spec file; relative ``output_root`` is relative to the current folder.

    Arguments
    ---------
    path : str
        The spec YAML.
    mode : str, optional
        Replaces the spec's ``mode`` (``run``, ``print`` or ``report``).

    Returns
    -------
    ReportSpec

    Raises
    ------
    SpecError
        Naming the file and the key at fault.
    """
    if not os.path.isfile(path):
        raise SpecError(f"Report spec {path} not found")
    with open(path, encoding="utf-8") as fin:
        content = load_yaml_without_duplicates(fin, path) or {}
    return spec_from_dict(content, path, mode)


def _duplicate_keys(node, where=()):
    """``(key path, key, first line, second line)`` of every key given twice in one mapping under ``node``."""
    found = []
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key != "<<":
                if key in seen:
                    found.append((where, key, seen[key] + 1, key_node.start_mark.line + 1))
                else:
                    seen[key] = key_node.start_mark.line
            found += _duplicate_keys(value_node, where + ((key,) if key is not None else ()))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found += _duplicate_keys(item, where + (str(index),))
    return found


def load_yaml_without_duplicates(stream, path="<spec>"):
    """``yaml.safe_load`` that refuses a key given twice in one mapping (YAML would keep only the last).

    Raises
    ------
    SpecError
        Naming each duplicated key, where it is (e.g. ``upstreams``) and both lines.

    Example
    -------
    >>> load_yaml_without_duplicates("upstreams: {a: /m/a, b: /m/b}")
    {'upstreams': {'a': '/m/a', 'b': '/m/b'}}
    >>> load_yaml_without_duplicates("upstreams: {a: /m/a, a: /m/b}", "s.yaml")
    Traceback (most recent call last):
    ...
    robustdistiller.report.spec.SpecError: s.yaml: `upstreams` names 'a' twice (lines 1 and 1); YAML would keep only the last one: give each entry its own name
    """
    try:
        loader = yaml.SafeLoader(stream)
        try:
            node = loader.get_single_node()
            duplicates = _duplicate_keys(node) if node is not None else []
            if duplicates:
                parts = [
                    f"`{'.'.join(where) or 'the spec'}` names '{key}' twice (lines {first} and {second})"
                    for where, key, first, second in duplicates
                ]
                raise SpecError(
                    f"{path}: {'; '.join(parts)}; YAML would keep only the last one: give each entry its own name"
                )
            return loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML: {error}") from error


def spec_from_dict(content, path="<spec>", mode=None):
    """:func:`load_spec` of an already-read mapping (``path`` only names it in errors).

    Example
    -------
    >>> spec = spec_from_dict({"output_root": "/tmp/r", "upstreams": {"a": "/m/a"}, "tasks": ["KS"],
    ...                        "data": {"KS": {"data_folder": "/d", "test_folder": "/t"}}, "overrides": {"KS": {"lr": 0.1}}})
    >>> pair = spec.pairs()[0]
    >>> pair.label, pair.output_folder, pair.overrides["upstream_source"], pair.overrides["lr"]
    ('KS/a', '/tmp/r/KS/a', '/m/a', 0.1)
    """
    if not isinstance(content, dict):
        raise SpecError(f"{path}: a report spec is a mapping with keys {', '.join(SPEC_KEYS)}")
    unknown = sorted(set(content) - set(SPEC_KEYS))
    if unknown:
        raise SpecError(f"{path}: unknown keys {unknown}; a report spec has {', '.join(SPEC_KEYS)}")
    if not content.get("output_root"):
        raise SpecError(f"{path}: `output_root` is required (each pair runs in <output_root>/<TASK>/<upstream>)")
    mode = mode or content.get("mode") or "run"
    if mode not in MODES:
        raise SpecError(f"{path}: `mode` must be one of {', '.join(MODES)}, got {mode!r}")

    upstreams = _mapping(content.get("upstreams"), "upstreams", path)
    if not upstreams:
        raise SpecError(f"{path}: `upstreams` must name at least one upstream (name: source)")
    for name in upstreams:
        if not UPSTREAM_NAME.match(str(name)):
            raise SpecError(f"{path}: upstream name {name!r} must be letters, digits and . _ + - (it is a folder name)")
    upstreams = {str(name): _upstream_options(name, value, path) for name, value in upstreams.items()}

    task_names = content.get("tasks")
    if isinstance(task_names, str):
        task_names = [task_names]
    if not task_names:
        raise SpecError(f"{path}: `tasks` must list at least one task")
    if len(set(task_names)) != len(task_names):
        raise SpecError(f"{path}: `tasks` lists a task twice: {task_names}")
    try:
        tasks = [get_task(str(name)) for name in task_names]
    except ValueError as error:
        raise SpecError(f"{path}: `tasks`: {error}") from None

    protocols = content.get("test_protocol") or [DEFAULT_PROTOCOL]
    if isinstance(protocols, str):
        protocols = [protocols]
    unknown = [name for name in protocols if name not in PRESET_NAMES]
    if unknown or len(set(protocols)) != len(protocols):
        raise SpecError(
            f"{path}: `test_protocol` must be one or more of {list(PRESET_NAMES)}, each once; got {protocols!r}"
        )
    conditions = content.get("conditions")
    if isinstance(conditions, str):
        conditions = [conditions]
    if conditions is not None and (not conditions or not all(isinstance(name, str) for name in conditions)):
        raise SpecError(f"{path}: `conditions` must be null (all) or a list of condition names, got {conditions!r}")
    if conditions is not None:
        repeated = sorted({name for name in conditions if conditions.count(name) > 1})
        if repeated:
            raise SpecError(f"{path}: `conditions` lists {repeated} more than once")
        defined = {
            task.name: [name for protocol in protocols for name in protocol_conditions(task, protocol)]
            for task in tasks
        }
        unknown = [name for name in conditions if not any(name in names for names in defined.values())]
        if unknown:
            listing = "; ".join(f"{name}: {', '.join(names)}" for name, names in defined.items())
            raise SpecError(
                f"{path}: `conditions` names {unknown}, which no task of the spec defines (it would "
                f"be dropped from every table); the recipes define {listing}"
            )
    for task in tasks if conditions is not None else ():
        if not any(protocol_conditions(task, protocol, conditions) for protocol in protocols):
            raise SpecError(
                f"{path}: `conditions` {conditions} names no condition of {task.name}; its recipe "
                f"({task.hparams_file}) has {task.condition_names}"
            )

    data = _mapping(content.get("data"), "data", path)
    overrides = _mapping(content.get("overrides"), "overrides", path)
    known = {task.name for task in tasks}
    for key, section in (("data", data), ("overrides", overrides)):
        extra = sorted(set(section) - known - ({"all"} if key == "overrides" else set()))
        if extra:
            raise SpecError(f"{path}: `{key}` has entries for {extra}, which are not in `tasks` {sorted(known)}")
        for name, value in section.items():
            section[name] = _mapping(value, f"{key}.{name}", path)
            reserved = sorted(set(section[name]) & set(RESERVED_OVERRIDES))
            if reserved:
                raise SpecError(
                    f"{path}: `{key}.{name}` sets {reserved}; the report sets them itself (output_root and upstreams)"
                )
    corruption = _mapping(content.get("corruption"), "corruption", path)
    references = _mapping(content.get("score_references"), "score_references", path)
    for name, value in references.items():
        if name not in known or not (isinstance(value, (list, tuple)) and len(value) == 2):
            raise SpecError(
                f"{path}: `score_references.{name}` must be [low, high] of a task in `tasks`, got {value!r}"
            )
    return ReportSpec(
        path=os.path.abspath(path) if os.path.exists(path) else path,
        output_root=os.path.abspath(os.fspath(content["output_root"])),
        mode=mode,
        upstreams=upstreams,
        tasks=tasks,
        conditions=list(conditions) if conditions is not None else None,
        corruption=corruption,
        data=data,
        overrides=overrides,
        python=content.get("python") or sys.executable,
        score_references={name: [float(low), float(high)] for name, (low, high) in references.items()},
        test_protocols=list(protocols),
    )
