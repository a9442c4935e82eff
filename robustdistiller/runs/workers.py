"""Data-loader workers: the CPUs a run may use, and ``num_workers`` capped at them.

PyTorch warns and oversubscribes the machine when a loader asks for more worker processes than the CPUs the
process may run on (e.g. ``num_workers: 8`` from a GPU-node YAML on a 2-core machine): every loader the recipes
build goes through :func:`cap_num_workers`.
"""

import logging
import os

logger = logging.getLogger(__name__)


def available_cpus():
    """The number of CPUs this process may run on (its affinity mask where the OS has one).

    Example
    -------
    >>> available_cpus() >= 1
    True
    """
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


_REPORTED_WORKER_CAPS = set()


def cap_num_workers(loader_kwargs, cpus=None):
    """DataLoader options with ``num_workers`` at most the CPU count (PyTorch warns and oversubscribes above it).

    Every loader the recipes build goes through this (the Brains' ``make_dataloader``, the held-out
    evaluation, QbE feature extraction); one info line per process and requested count says when a
    YAML's ``num_workers`` was lowered.

    Arguments
    ---------
    loader_kwargs : dict or None
        The loader options (``train_dataloader_opts``, ...); not changed.
    cpus : int, optional
        The CPU count (default :func:`available_cpus`).

    Returns
    -------
    dict
        A copy, ``num_workers`` capped.

    Example
    -------
    >>> cap_num_workers({"batch_size": 8, "num_workers": 8}, cpus=2)
    {'batch_size': 8, 'num_workers': 2}
    >>> cap_num_workers({"num_workers": 0}, cpus=2)
    {'num_workers': 0}
    """
    loader_kwargs = dict(loader_kwargs or {})
    requested = loader_kwargs.get("num_workers")
    if requested is None:
        return loader_kwargs
    cpus = available_cpus() if cpus is None else cpus
    if int(requested) > cpus:
        loader_kwargs["num_workers"] = cpus
        if (int(requested), cpus) not in _REPORTED_WORKER_CAPS:
            _REPORTED_WORKER_CAPS.add((int(requested), cpus))
            logger.info("num_workers=%s lowered to %d, the CPUs available to this run.", requested, cpus)
    return loader_kwargs
