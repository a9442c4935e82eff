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
    robustdistiller.options.OptionError: Option `number_of_steps` must be an integer >= 1, got 0.
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
    robustdistiller.options.OptionError: Option `data_folder` = '/data/$HOME/x' contains '$', which SpeechBrain's CSV lists read as a variable; rename or link the folder to a path without '$'.
    """
    if path is not None and "$" in str(path):
        raise OptionError(
            f"Option `{option_name}` = {str(path)!r} contains '$', which SpeechBrain's CSV lists read as a "
            "variable; rename or link the folder to a path without '$'."
        )
    return path
