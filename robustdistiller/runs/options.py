"""Checks of user options (YAML keys and command-line overrides) with messages that name the option.

One place for the rules every recipe shares: a single string where a list is expected is a
one-item list (``--train_splits=train-clean-100`` must not become ``['t', 'r', ...]``), counts are
integers in a stated range, data paths have no character that SpeechBrain's CSV loader would expand.
"""

import logging

logger = logging.getLogger(__name__)


class OptionError(ValueError):
    """An option has a value the recipe cannot use; the message names the option and the fix."""


def as_list(value, option_name):
    """The option's value as a list: a single string (or number) becomes a one-item list.

    Arguments
    ---------
    value : str, number, list, tuple or None
        The option as read from the YAML or the command line; None is an empty list.
    option_name : str
        Named in the error for other types.

    Returns
    -------
    list

    Example
    -------
    >>> as_list("train-clean-100", "train_splits")
    ['train-clean-100']
    >>> as_list(["dev-clean", "dev-other"], "valid_splits")
    ['dev-clean', 'dev-other']
    >>> as_list(None, "valid_splits")
    []
    """
    if value is None:
        return []
    if isinstance(value, (str, bytes, int, float)):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise OptionError(
        f"Option `{option_name}` must be a list (e.g. [a, b]) or a single value, not {type(value).__name__}: {value!r}"
    )


def integer_at_least(value, option_name, minimum):
    """The option as an integer, refused below ``minimum`` (command-line values arrive as strings).

    Example
    -------
    >>> integer_at_least("200", "number_of_steps", 1)
    200
    >>> integer_at_least(0, "number_of_steps", 1)
    Traceback (most recent call last):
    ...
    robustdistiller.runs.options.OptionError: Option `number_of_steps` must be an integer >= 1, got 0.
    """
    try:
        number = int(value)
        if number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise OptionError(f"Option `{option_name}` must be an integer >= {minimum}, got {value!r}.") from None
    if number < minimum:
        raise OptionError(f"Option `{option_name}` must be an integer >= {minimum}, got {number}.")
    return number


def check_data_path(path, option_name):
    """Refuses a data path with ``$``, which SpeechBrain's CSV loader would read as a variable.

    Lists written by preparation hold absolute paths; ``DynamicItemDataset.from_csv`` substitutes
    ``$name`` in every field, so such a path fails (or points elsewhere) when the list is read.

    Example
    -------
    >>> check_data_path("/data/LibriSpeech", "data_folder")
    '/data/LibriSpeech'
    >>> check_data_path("/data/$HOME/x", "data_folder")
    Traceback (most recent call last):
    ...
    robustdistiller.runs.options.OptionError: Option `data_folder` = '/data/$HOME/x' contains '$', which SpeechBrain's CSV lists read as a variable; rename or link the folder to a path without '$'.
    """
    if path is not None and "$" in str(path):
        raise OptionError(
            f"Option `{option_name}` = {str(path)!r} contains '$', which SpeechBrain's CSV lists read as a "
            "variable; rename or link the folder to a path without '$'."
        )
    return path


def step_limit_as_number_of_steps(run_opts, overrides, steps_option="number_of_steps", stage_options=None):
    """SpeechBrain's ``--optimizer_step_limit=N`` as the recipe's own length option.

    SpeechBrain's run option only stops the Brain after N optimizer steps; the recipes derive their
    learning-rate schedule (warm-up and decay) from ``number_of_steps``, so N steps on a 200,000-step
    schedule would run at learning rates near 1e-8. For the distillation recipe the option alone becomes
    ``--number_of_steps=N`` (schedule and stop together); given together with ``--number_of_steps`` it
    keeps SpeechBrain's meaning (stop this invocation after N steps of that schedule; a re-run resumes).
    For a recipe with several stages (``stage_options``) it is refused, naming the options that set each
    stage's length.

    Arguments
    ---------
    run_opts : speechbrain RunOptions or dict
        From ``sb.parse_arguments``.
    overrides : str or dict
        The YAML overrides from ``sb.parse_arguments`` (a YAML string) or a dict.
    steps_option : str
        The recipe's length option.
    stage_options : sequence of str, optional
        When given, ``--optimizer_step_limit`` is refused naming these.

    Returns
    -------
    tuple
        ``(run_opts, overrides)`` without ``optimizer_step_limit``, with ``steps_option`` set.

    Raises
    ------
    OptionError
        For a multi-stage recipe.

    Example
    -------
    >>> step_limit_as_number_of_steps({"optimizer_step_limit": "4", "device": "cpu"}, "lr: 0.1")
    ({'device': 'cpu'}, {'lr': 0.1, 'number_of_steps': 4})
    >>> step_limit_as_number_of_steps({"optimizer_step_limit": 3}, "number_of_steps: 6")  # an early stop
    ({'optimizer_step_limit': 3}, 'number_of_steps: 6')
    """
    import dataclasses

    import yaml

    given = getattr(run_opts, "overridden_args", None)
    values = run_opts if isinstance(run_opts, dict) else run_opts.as_dict()
    if given is None:
        given = {key for key, value in values.items() if value is not None}
    if "optimizer_step_limit" not in given or values.get("optimizer_step_limit") is None:
        return run_opts, overrides
    limit = integer_at_least(values["optimizer_step_limit"], "optimizer_step_limit", 1)
    if stage_options:
        raise OptionError(
            f"--optimizer_step_limit={limit} would stop each stage after {limit} steps of a schedule planned for "
            f"another length; set the length of each stage instead: "
            + ", ".join(f"--{option}=N" for option in stage_options)
            + "."
        )
    if isinstance(overrides, dict):
        parsed = dict(overrides)
    else:
        parsed = yaml.safe_load(overrides or "") or {}
    if steps_option in parsed:  # both given: a stop after `limit` steps of the run's schedule, on purpose
        logger.info(
            "--optimizer_step_limit=%d stops this invocation early; the schedule is that of --%s=%s.",
            limit,
            steps_option,
            parsed[steps_option],
        )
        return run_opts, overrides
    logger.warning(
        "--optimizer_step_limit=%d is taken as --%s=%d (the learning-rate schedule follows it).",
        limit,
        steps_option,
        limit,
    )
    parsed[steps_option] = limit
    if isinstance(run_opts, dict):
        run_opts = {key: value for key, value in run_opts.items() if key != "optimizer_step_limit"}
    else:
        run_opts = dataclasses.replace(
            run_opts, optimizer_step_limit=None, overridden_args=set(given) - {"optimizer_step_limit"}
        )
    return run_opts, parsed


def missing_required_options(hparams_file, overrides=None):
    """The ``!PLACEHOLDER`` keys of a hyperparameter file that the overrides leave unset.

    HyperPyYAML reports only the first placeholder it meets, and only after it has run every
    ``!applyref`` before it (which then fails on the placeholder object itself); this reads the YAML
    text first, so an entry point can name every missing option before anything is loaded or written.
    A placeholder given any value counts as given, ``null`` included (``--urbansound_folder=null`` is a
    deliberate MUSAN-only noise pool in the distillation recipes).

    Arguments
    ---------
    hparams_file : str or path
        The recipe's YAML file.
    overrides : str, dict or None
        The overrides from ``sb.parse_arguments`` (a YAML string) or a dict.

    Returns
    -------
    list of str
        The keys, in file order; a nested key as ``parent[key]``.

    Example
    -------
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
    ...     _ = f.write("data_folder: !PLACEHOLDER\\nupstream_source: !PLACEHOLDER\\nlr: 0.1\\n")
    >>> missing_required_options(f.name, "lr: 0.2")
    ['data_folder', 'upstream_source']
    >>> missing_required_options(f.name, "data_folder: /data")
    ['upstream_source']
    >>> missing_required_options(f.name, {"data_folder": "/data", "upstream_source": "x.ckpt"})
    []
    """
    import ruamel.yaml

    with open(hparams_file, encoding="utf-8") as fin:
        tree = ruamel.yaml.YAML().load(fin)
    if isinstance(overrides, str):
        overrides = ruamel.yaml.YAML().load(overrides) if overrides.strip() else None  # as HyperPyYAML reads them
    overrides = overrides if isinstance(overrides, dict) else {}

    missing = []

    def walk(node, given, path):
        for key, value in node.items():
            is_given = isinstance(given, dict) and key in given
            sub_given = given[key] if is_given else None
            name = f"{path}[{key}]" if path else str(key)
            tag = getattr(getattr(value, "tag", None), "value", None)
            if tag == "!PLACEHOLDER":
                if not is_given:
                    missing.append(name)
            elif isinstance(value, dict):
                walk(value, sub_given, name)

    if isinstance(tree, dict):
        walk(tree, overrides, "")
    return missing


def exit_if_required_options_missing(hparams_file, overrides=None):
    """Stops an entry point, naming every required option (``!PLACEHOLDER``) the command line leaves unset.

    Called right after ``sb.parse_arguments``, before the YAML is loaded and before any folder is made.

    Raises
    ------
    SystemExit
        With a message naming the options as command-line options (exit status 1).

    Example
    -------
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
    ...     _ = f.write("data_folder: !PLACEHOLDER\\nupstream_source: !PLACEHOLDER\\n")
    >>> exit_if_required_options_missing(f.name, "data_folder: /data\\nupstream_source: x.ckpt")
    >>> exit_if_required_options_missing(f.name, "data_folder: /data")
    Traceback (most recent call last):
    ...
    SystemExit: Missing required option: --upstream_source (...yaml marks it !PLACEHOLDER). ...
    """
    import os

    missing = missing_required_options(hparams_file, overrides)
    if not missing:
        return
    names = ", ".join("--" + name.replace("[", "={").replace("]", ": ...}") for name in missing)
    example = " ".join(f"--{name}=..." for name in missing if "[" not in name)
    raise SystemExit(
        f"Missing required option{'s' if len(missing) > 1 else ''}: {names} "
        f"({os.path.basename(str(hparams_file))} marks {'them' if len(missing) > 1 else 'it'} !PLACEHOLDER). "
        f"Give {'them' if len(missing) > 1 else 'it'} on the command line, e.g. "
        f"python train.py {hparams_file} {example}"
    )
