"""The test protocol: conditions, test-only corruption lists and the corruptors that apply them.

:data:`DEFAULT_TEST_CONDITIONS` (clean / SNR 20, 15, 10, 5, 0 dB / reverb / noise + reverb),
:func:`build_corruptor` and :func:`build_corruptors` (test-only noise and RIR lists, disjoint from the
distillation ones, and optional training corruption), :func:`select_conditions` (conditions whose lists
exist).
"""

import logging

from speechbrain.augment.time_domain import AddNoise

from robustdistiller.data.corruption import Corruptor, NoisePool, PooledAddReverb
from robustdistiller.runs.options import as_list, OptionError
from robustdistiller.data.prepare.noise import prepare_noise
from robustdistiller.data.prepare.rirs import prepare_rirs
from robustdistiller.downstream.protocols import (
    DEFAULT_PROTOCOL,
    build_protocol_corruptor,
    load_preset,
    prepare_protocol_sources,
    read_manifest,
    preset_test_conditions,
    select_preset_conditions,
)

logger = logging.getLogger(__name__)


# Clean, additive noise at five SNRs, reverberation, and both (noise at 10 dB, then reverb).
DEFAULT_TEST_CONDITIONS = {
    "clean": {"condition": "clean"},
    "snr20": {"condition": "noise", "snr": 20},
    "snr15": {"condition": "noise", "snr": 15},
    "snr10": {"condition": "noise", "snr": 10},
    "snr5": {"condition": "noise", "snr": 5},
    "snr0": {"condition": "noise", "snr": 0},
    "reverb": {"condition": "reverb"},
    "noise_reverb": {"condition": "noise_reverb", "snr": 10},
}


def build_corruptor(noise_csv, rir_csv, seed=2024, snr_low=0.0, snr_high=20.0, sample_rate=16000, condition_probs=None):
    """A :class:`Corruptor` with noise from files only and reverb from a RIR list.

    Arguments
    ---------
    noise_csv : str or None
        Test-only noise list (``ID,duration,wav,...``); None disables the noise conditions.
    rir_csv : str or None
        Test-only RIR list; None disables the reverb conditions.
    seed : int
        Base seed; the same seed gives every upstream the same corrupted audio.
    snr_low, snr_high : float
        SNR range used when a condition does not fix the SNR.
    sample_rate : int
        Sample rate of the audio.
    condition_probs : dict, optional
        Probabilities of the conditions drawn when none is forced (default: equal over the
        conditions the given lists allow).

    Returns
    -------
    Corruptor
    """
    file_noise = None
    if noise_csv:
        file_noise = AddNoise(
            snr_low=snr_low, snr_high=snr_high, noise_funct=NoisePool(noise_csv, sample_rate=sample_rate)
        )
    reverb = PooledAddReverb(rir_csv, sample_rate=sample_rate) if rir_csv else None
    return Corruptor(
        file_noise=file_noise,
        white_noise=None,
        reverb=reverb,
        condition_probs=condition_probs or _available_condition_probs(file_noise is not None, reverb is not None),
        file_noise_prob=1.0,
        seed=seed,
    )


def prepare_test_corruption(
    save_folder,
    musan_folder=None,
    musan_subsets=("music", "speech"),
    noise_folders=(),
    rir_folder=None,
    rir_format="rirs_noises",
    rirs_noises_subsets=("simulated",),
    skip_prep=False,
    prefix="test",
):
    """Writes the test-only noise and RIR lists (``test_noise.csv``, ``test_rirs.csv``).

    The defaults are disjoint from the distillation recipe's (MUSAN ``noise/`` and the real RIRs of
    RIRS_NOISES): test noise is MUSAN ``music/`` and ``speech/`` (babble-like), test reverberation the
    simulated RIRs. No official noisy SUPERB protocol exists (``docs/reference/superb_tasks.md`` "Protocol"), so this
    choice is ours and configurable.

    Arguments
    ---------
    save_folder : str
        Where the lists are written.
    musan_folder : str, optional
        The ``musan`` folder (None: no MUSAN noise).
    musan_subsets : sequence of str
        MUSAN subsets of the test noise.
    noise_folders : sequence of str
        Other folders of test noise files.
    rir_folder : str, optional
        RIR corpus (None: no reverb conditions).
    rir_format : str
        See :func:`robustdistiller.data.prepare.rirs.prepare_rirs`.
    rirs_noises_subsets : sequence of str
        See :func:`robustdistiller.data.prepare.rirs.prepare_rirs`.
    skip_prep : bool
        Only return the paths.
    prefix : str
        File name prefix (``train`` for the lists of training on corrupted data).

    Returns
    -------
    (str or None, str or None)
        The noise and RIR CSV paths (None where no source was given).
    """
    noise_csv = rir_csv = None
    if musan_folder or noise_folders:
        noise_csv = prepare_noise(
            save_folder,
            musan_folder=musan_folder,
            musan_subsets=musan_subsets,  # prepare_noise reads a single string as a one-item list
            extra_folders=noise_folders,
            csv_name=f"{prefix}_noise.csv",
            skip_prep=skip_prep,
        )
    if rir_folder:
        rir_csv = prepare_rirs(
            save_folder,
            rir_folder,
            rir_format=rir_format,
            rirs_noises_subsets=rirs_noises_subsets,
            csv_name=f"{prefix}_rirs.csv",
            skip_prep=skip_prep,
        )
    return noise_csv, rir_csv


def prepare_corruption_lists(hparams):
    """Prepares the recipe's test (and, with ``train_corruption``, training) noise and RIR lists.

    Reads the recipe YAML keys ``save_folder``, ``skip_prep``, ``test_musan_folder``,
    ``test_musan_subsets``, ``test_noise_folders``, ``test_rir_folder``, ``test_rir_format``,
    ``test_rirs_noises_subsets`` and, when ``train_corruption`` is True, the same ``train_*`` keys.
    Run it with ``run_on_main``; :func:`build_corruptors` then reads the lists on every process.
    With ``test_protocol`` other than ``robustdistiller``, the test lists are that preset's sources
    (:func:`robustdistiller.downstream.protocols.prepare_protocol_sources`).

    Returns
    -------
    dict
        ``{"test": (noise_csv, rir_csv) or {source: csv}, "train": (noise_csv, rir_csv) or None}``.
    """
    protocol = hparams.get("test_protocol") or DEFAULT_PROTOCOL
    if protocol == DEFAULT_PROTOCOL:
        test_lists = _prepare_lists(hparams, "test")
    else:
        test_lists = prepare_protocol_sources(hparams, load_preset(protocol))
    lists = {"test": test_lists, "train": None}
    if hparams.get("train_corruption", False):
        lists["train"] = _prepare_lists(hparams, "train")
    return lists


def _prepare_lists(hparams, prefix):
    def listed(name):  # a single string is a one-item list
        return as_list(hparams.get(f"{prefix}_{name}"), f"{prefix}_{name}")

    return prepare_test_corruption(
        hparams["save_folder"],
        musan_folder=hparams.get(f"{prefix}_musan_folder"),
        musan_subsets=listed("musan_subsets"),
        noise_folders=listed("noise_folders"),
        rir_folder=hparams.get(f"{prefix}_rir_folder"),
        rir_format=hparams.get(f"{prefix}_rir_format", "rirs_noises"),
        rirs_noises_subsets=listed("rirs_noises_subsets"),
        skip_prep=hparams.get("skip_prep", False),
        prefix=prefix,
    )


def build_corruptors(hparams):
    """The test corruptor, the training corruptor (or None) and the test conditions that can run.

    The conditions are the recipe's ``release_conditions`` (signal tasks: inputs as released, e.g. SE's
    noisy test set; see :mod:`robustdistiller.downstream.signal`), if any, then ``test_conditions``.
    ``test_condition_names`` (optional; a single name is a one-item list, null or ``[]`` keeps all)
    restricts them to a subset, in that order.
    The test corruptor is seeded with ``test_corruption_seed`` (the same for every upstream); the
    training one (``train_corruption: True``) draws clean / noise / reverb / both per utterance with
    ``train_condition_probs`` and SNRs in ``[train_snr_low, train_snr_high]``.
    ``test_protocol`` (default ``robustdistiller``) picks the preset: another preset
    (``huang2022``, ``srb``; ``docs/test_protocols.md``) replaces ``test_conditions`` and the test corruptor
    by its own (:class:`robustdistiller.downstream.protocols.ProtocolCorruptor`). With
    ``test_audio_manifest`` (a :mod:`robustdistiller.downstream.render_protocol` ``manifest.csv``), the
    conditions are the manifest's and the test audio is read from its files (the test corruptor is None).

    Returns
    -------
    (Corruptor or ProtocolCorruptor, Corruptor or None, dict)
    """
    protocol = hparams.get("test_protocol") or DEFAULT_PROTOCOL
    load_preset(protocol)  # an unknown name fails here, naming the option
    if hparams.get("test_audio_manifest"):
        test_conditions = read_manifest(hparams["test_audio_manifest"])[0]
        return None, _train_corruptor(hparams), _named_conditions(hparams, test_conditions)
    lists = prepare_corruption_lists({**hparams, "test_protocol": DEFAULT_PROTOCOL, "skip_prep": True})
    test_noise, test_rirs = lists["test"]
    if protocol == DEFAULT_PROTOCOL:
        test_corruptor = build_corruptor(test_noise, test_rirs, seed=hparams.get("test_corruption_seed", 2024))
        test_conditions = hparams["test_conditions"]
    else:
        test_corruptor, preset, source_lists = build_protocol_corruptor(hparams, protocol)
        test_conditions = preset_test_conditions(preset)
    conditions = _named_conditions(hparams, test_conditions)
    if protocol == DEFAULT_PROTOCOL:
        conditions = select_conditions(conditions, test_noise, test_rirs)
    else:
        released = {name: spec for name, spec in conditions.items() if name not in test_conditions}
        preset_conditions = {name: spec for name, spec in conditions.items() if name in test_conditions}
        conditions = {**released, **select_preset_conditions(preset, preset_conditions, source_lists)}
    return test_corruptor, _train_corruptor(hparams, lists), conditions


def _named_conditions(hparams, test_conditions):
    """The release conditions then ``test_conditions``, restricted to ``test_condition_names`` (if set)."""
    conditions = {**(hparams.get("release_conditions") or {}), **test_conditions}
    names = as_list(hparams.get("test_condition_names"), "test_condition_names")
    if names:
        unknown = sorted(set(names) - set(conditions), key=str)
        if unknown:
            raise OptionError(
                f"Option `test_condition_names` names {unknown}, which are not in test_conditions "
                f"{sorted(conditions)}; pick among those (null runs them all)."
            )
        conditions = {name: conditions[name] for name in names}
    return conditions


def _train_corruptor(hparams, lists=None):
    """The training corruptor (``train_corruption: True``), or None."""
    if not hparams.get("train_corruption", False):
        return None
    if lists is None:
        lists = {"train": _prepare_lists({**hparams, "skip_prep": True}, "train")}
    train_noise, train_rirs = lists["train"]
    return build_corruptor(
        train_noise,
        train_rirs,
        seed=hparams["seed"],
        snr_low=hparams.get("train_snr_low", 0.0),
        snr_high=hparams.get("train_snr_high", 20.0),
        condition_probs=hparams.get("train_condition_probs"),
    )


def select_conditions(conditions, noise_csv, rir_csv):
    """Drops the conditions whose noise or RIR list is missing (with a warning naming them)."""
    kept = {}
    for name, spec in conditions.items():
        needs_noise, needs_reverb = "noise" in spec["condition"], "reverb" in spec["condition"]
        if (needs_noise and not noise_csv) or (needs_reverb and not rir_csv):
            logger.warning("Test condition '%s' skipped: no %s list", name, "noise" if needs_noise else "RIR")
            continue
        kept[name] = spec
    return kept


def _available_condition_probs(has_noise, has_reverb):
    """Equal probabilities over the conditions the available adders can produce."""
    names = ["clean"] + (["noise"] if has_noise else []) + (["reverb"] if has_reverb else [])
    if has_noise and has_reverb:
        names.append("noise_reverb")
    return {name: 1.0 / len(names) for name in names}
