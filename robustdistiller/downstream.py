"""Shared framework of the SUPERB downstream recipes (``recipes/<Dataset>/<Task>/train.py``).

Every recipe evaluates a *frozen* upstream with a small task head on a learnable softmax-weighted sum
of the upstream's hidden layers (REFERENCE.md section 5), on clean and corrupted test sets:

* :class:`FrozenUpstream`: any upstream kind behind one interface -- our exported student folder, our
  distillation checkpoint, an s3prl-format checkpoint (all through
  :func:`robustdistiller.export.load_student`), or any Hugging Face WavLM / HuBERT / wav2vec 2.0 hub id
  or folder (the WavLM Base+ teacher row). Frozen (no gradients, always eval, fp32) and kept out of the
  Brain's modules, so no upstream weight ever enters a downstream checkpoint.
* :class:`WeightedLayerSum`: the learnable softmax weights over layers (logged at the end).
* :class:`AudioPipeline`: reads (and crops) an utterance and, for a test condition, corrupts it with a
  :class:`~robustdistiller.corruption.Corruptor` seeded by the utterance id -- every upstream hears
  exactly the same corrupted audio.
* :func:`build_corruptor`, :func:`build_corruptors`, :data:`DEFAULT_TEST_CONDITIONS`: test-only noise and RIR lists
  (disjoint from the distillation ones), clean / SNR 20, 15, 10, 5, 0 dB / reverb / noise + reverb.
* :class:`DownstreamBrain`: ``encode`` (upstream + weighted sum), per-epoch corruption seeds, CPU-safe
  DDP (no SyncBatchNorm conversion on CPU), :meth:`~DownstreamBrain.evaluate_conditions`.
* :func:`write_condition_results`: ``results.json`` and ``results.md`` in the output folder.

A run knows its upstream: :func:`start_run` (the first thing every recipe does after loading its YAML)
checks the options, takes the output folder's lock and records the upstream's identity
(:meth:`FrozenUpstream.identity`: kind, source, weights fingerprint, layers, width, options) in
``<save_folder>/upstream.json``; a rerun in that folder with another upstream is refused
(:class:`UpstreamChangedError`) instead of resuming a head trained on the first one and crediting the
second with its results. The default output folder, ``results/<task>/<upstream_name>/<seed>``, already
differs per upstream (:func:`upstream_name`).
"""

import hashlib
import json
import logging
import os
import re

import speechbrain as sb
import torch
import torch.nn as nn
from speechbrain.augment.time_domain import AddNoise
from torch.nn.parallel import DistributedDataParallel

from robustdistiller.audio import load_audio
from robustdistiller.corruption import Corruptor, NoisePool, PooledAddReverb, hash_seed
from robustdistiller.export import ExportError, load_student, locate_checkpoint
from robustdistiller.fingerprint import weights_fingerprint
from robustdistiller.interface import looks_like_path
from robustdistiller.options import OptionError, as_list, integer_at_least
from robustdistiller.prepare import prepare_noise, prepare_rirs
from robustdistiller.run_folder import ChangedSettingsError, lock_output_folder
from robustdistiller.student import num_parameters
from robustdistiller.teacher import FrozenTeacher, load_ssl_model

logger = logging.getLogger(__name__)

UPSTREAM_KINDS = ("auto", "student", "hf")

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

UPSTREAM_IDENTITY_FILE = "upstream.json"
# Fields of FrozenUpstream.identity() that must match for a run to resume: what the features are made
# of. The source (its spelling, or where a copy of the weights lives) is recorded but not compared.
IDENTITY_FIELDS = ("kind", "fingerprint", "num_layers", "hidden_size", "include_predictions", "per_utterance_norm")

# Downstream YAML options that are lists; a single string given for one is a one-item list.
LIST_OPTIONS = tuple(
    f"{prefix}_{name}"
    for prefix in ("test", "train")
    for name in ("musan_subsets", "noise_folders", "rirs_noises_subsets")
) + ("test_condition_names",)

# Path components that say nothing about which model a path holds (our own folder and file names).
_GENERIC_PATH_PARTS = {"save", "student", "model", "checkpoint", "checkpoints", "export", "exported"}
_WEIGHT_FILE_EXTENSIONS = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")


def upstream_name(source, max_length=80):
    """A short, filesystem-safe name of an upstream, for default output folders.

    A hub id gives its model name (the part after the owner). A path (existing, or written as one)
    gives its last component, without a weight-file extension, prefixed by its parents while they
    are our generic names (``save``, ``CKPT+...``, ``student.ckpt``, ``exported``...), so that a
    distillation checkpoint is named after its run; ``save`` itself is left out. A relative path
    gives the same name as its absolute spelling. Characters other than letters, digits and
    ``. _ + -`` become ``_``.

    Arguments
    ---------
    source : str or os.PathLike
        The ``upstream_source`` option.
    max_length : int
        Longer names are cut, keeping a hash of the full name at the end (they stay distinct).

    Returns
    -------
    str

    Example
    -------
    >>> upstream_name("microsoft/wavlm-base-plus")
    'wavlm-base-plus'
    >>> upstream_name("/runs/robust/save/CKPT+2024-05-01+12-00-00+00")
    'robust-CKPT+2024-05-01+12-00-00+00'
    >>> upstream_name("/runs/robust/save"), upstream_name("/models/exported_student/")
    ('robust', 'exported_student')
    >>> upstream_name("/models/distilhubert.ckpt"), upstream_name("/runs/robust/exported")
    ('distilhubert', 'robust-exported')
    >>> upstream_name("/models/my model (v2)")
    'my_model_v2'
    """
    if source is None or not str(os.fspath(source)).strip():
        raise OptionError("Option `upstream_source` is empty: give a hub id or the path of an upstream.")
    source = str(os.fspath(source)).strip()
    expanded = os.path.expanduser(source)
    if os.path.exists(expanded) or looks_like_path(source):
        picked = []
        for part in reversed([part for part in os.path.abspath(expanded).split(os.sep) if part]):
            stem, extension = os.path.splitext(part)
            if extension.lower() not in _WEIGHT_FILE_EXTENSIONS:
                stem = part
            generic = stem.lower() in _GENERIC_PATH_PARTS or stem.startswith("CKPT+")
            if stem.lower() != "save":
                picked.append(stem)
            if not generic:
                break
        name = "-".join(reversed(picked))
    else:
        name = source.rstrip("/").split("/")[-1]
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._-") or "upstream"
    if len(name) > max_length:
        name = f"{name[: max_length - 9]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return name


class FrozenUpstream(nn.Module):
    """A frozen speech encoder returning all its hidden layers, whatever kind of checkpoint it is.

    Arguments
    ---------
    source : str
        Exported student folder, distillation output / save / ``CKPT+`` folder, ``student.ckpt``,
        s3prl-format ``.ckpt``, or a Hugging Face hub id / folder of a WavLM, HuBERT or wav2vec 2.0.
    kind : str
        ``"auto"`` (a folder or file our :func:`~robustdistiller.export.locate_checkpoint` recognises
        is a student, anything else a Hugging Face model; hub ids are Hugging Face models),
        ``"student"`` or ``"hf"``.
    include_predictions : bool
        For students, append the prediction heads' outputs (estimates of the teacher's layers) to the
        hidden states, as s3prl's distiller upstream does (DistilHuBERT's SUPERB numbers use them).
    per_utterance_norm : bool
        First CNN GroupNorm over each utterance's own samples, so features do not depend on the
        padding of a batch (students trained by our recipe use it; for other models it removes the
        batch-composition dependence of plain Hugging Face).
    cache_dir : str, optional
        Hugging Face cache folder.

    Example
    -------
    >>> import tempfile
    >>> from robustdistiller.teacher import save_random_teacher
    >>> upstream = FrozenUpstream(save_random_teacher(tempfile.mkdtemp(), model_type="hubert"))
    >>> features, frame_mask = upstream(torch.randn(2, 16000), torch.tensor([1.0, 0.5]))
    >>> upstream.kind, upstream.num_layers, features.shape, frame_mask.sum(dim=1).tolist()
    ('hf', 13, torch.Size([2, 13, 49, 64]), [49, 24])
    """

    def __init__(self, source, kind="auto", include_predictions=True, per_utterance_norm=True, cache_dir=None):
        super().__init__()
        if kind not in UPSTREAM_KINDS:
            raise ValueError(f"upstream kind must be one of {UPSTREAM_KINDS}, got {kind!r}")
        source = os.fspath(source)
        self.source = source
        if kind == "auto":
            kind = self._detect_kind(source)
        self.kind = kind
        self.include_predictions = bool(include_predictions)
        self.per_utterance_norm = bool(per_utterance_norm)
        self._identity = None
        if kind == "student":
            student, info = load_student(source, per_utterance_norm=per_utterance_norm)
            self.model = student
            self.description = f"student from {info['source']} ({info['format']}, step {info['step']})"
            self.hidden_size = student.config.hidden_size
            self.num_layers = student.config.num_hidden_layers + 1
            if self.include_predictions:
                if student.prediction_heads.target_size != self.hidden_size:
                    raise ValueError(
                        f"Upstream '{source}': prediction heads of width {student.prediction_heads.target_size} "
                        f"cannot be summed with hidden states of width {self.hidden_size}; set "
                        f"include_predictions to False"
                    )
                self.num_layers += len(student.target_layers)
        else:
            model = load_ssl_model(source, cache_dir=cache_dir)
            layers = tuple(range(model.config.num_hidden_layers + 1))
            self.model = FrozenTeacher(model, target_layers=layers, per_utterance_norm=per_utterance_norm)
            self.description = f"{type(model).__name__} from {source}"
            self.hidden_size = model.config.hidden_size
            self.num_layers = len(layers)
        self.model.requires_grad_(False)
        self.train(False)
        logger.info(
            "Upstream: %s, %d layers of %d dims, %s parameters (frozen)",
            self.description,
            self.num_layers,
            self.hidden_size,
            f"{num_parameters(self.model):,}",
        )

    def identity(self):
        """What this upstream is, as recorded in ``upstream.json`` and ``results.json``.

        Returns
        -------
        dict
            ``kind`` (``student`` or ``hf``, never ``auto``), ``source`` (as given), ``source_path``
            (absolute path of a local source, None for a hub id), ``fingerprint``
            (:func:`~robustdistiller.fingerprint.weights_fingerprint` of the frozen weights, which
            identifies the upstream whatever path it was loaded from), ``num_layers`` and
            ``hidden_size`` (of the features the head sees), ``include_predictions`` (always False
            for Hugging Face models, which have no prediction heads), ``per_utterance_norm`` and
            ``description``. The weights are frozen, so this is computed once.

        Example
        -------
        >>> import tempfile
        >>> from robustdistiller.teacher import save_random_teacher
        >>> identity = FrozenUpstream(save_random_teacher(tempfile.mkdtemp(), model_type="hubert")).identity()
        >>> identity["kind"], identity["num_layers"], identity["hidden_size"], len(identity["fingerprint"])
        ('hf', 13, 64, 16)
        """
        if self._identity is None:
            expanded = os.path.expanduser(self.source)
            self._identity = {
                "kind": self.kind,
                "source": self.source,
                "source_path": os.path.abspath(expanded) if os.path.exists(expanded) else None,
                "fingerprint": weights_fingerprint(self.model),
                "num_layers": self.num_layers,
                "hidden_size": self.hidden_size,
                "include_predictions": self.kind == "student" and self.include_predictions,
                "per_utterance_norm": self.per_utterance_norm,
                "description": self.description,
            }
        return dict(self._identity)

    @staticmethod
    def _detect_kind(source):
        expanded = os.path.expanduser(source)
        if not os.path.exists(expanded):
            if looks_like_path(source):
                raise ExportError(f"Upstream source '{source}' does not exist")
            return "hf"  # a hub id
        try:
            locate_checkpoint(expanded)
            return "student"
        except ExportError:
            return "hf"

    def train(self, mode=True):
        """Keeps the upstream in eval mode whatever ``mode`` is (no dropout, no layerdrop)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, wavs, wav_lens=None):
        """All hidden layers of a padded batch, without gradient and in fp32.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[B, T]`` waveforms at 16 kHz.
        wav_lens : torch.Tensor, optional
            ``[B]`` relative lengths.

        Returns
        -------
        features : torch.Tensor
            ``[B, L, F, D]``.
        frame_mask : torch.Tensor
            ``[B, F]`` bool, True on valid frames.
        """
        with torch.autocast(device_type=wavs.device.type, enabled=False):
            wavs = wavs.float()
            if self.kind == "hf":
                output = self.model(wavs, wav_lens)
                return output.layers, output.frame_mask
            output = self.model(wavs, wav_lens)
            layers = list(output.hidden_states)
            if self.include_predictions:
                layers += list(output.predictions.unbind(dim=1))
            return torch.stack(layers, dim=1).float(), output.frame_mask


class WeightedLayerSum(nn.Module):
    """Learnable softmax-weighted sum of an upstream's layers (SUPERB's featurizer).

    Arguments
    ---------
    num_layers : int
        Number of layers ``L`` to combine (weights start equal).
    layer_norm : bool
        Normalise each layer over its feature dimension (no affine) before summing.

    Example
    -------
    >>> weighted_sum = WeightedLayerSum(3)
    >>> features = torch.stack([torch.zeros(2, 4, 5), torch.ones(2, 4, 5), 2 * torch.ones(2, 4, 5)], dim=1)
    >>> weighted_sum(features)[0, 0, 0].item()
    1.0
    >>> weighted_sum.layer_weights()
    [0.3333333432674408, 0.3333333432674408, 0.3333333432674408]
    """

    def __init__(self, num_layers, layer_norm=False):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_layers))
        self.layer_norm = bool(layer_norm)

    def forward(self, features):
        """``[B, L, F, D]`` -> ``[B, F, D]``."""
        if features.shape[1] != self.weights.shape[0]:
            raise ValueError(
                f"WeightedLayerSum expects {self.weights.shape[0]} layers, got {features.shape[1]} "
                f"(features of shape {tuple(features.shape)})"
            )
        if self.layer_norm:
            features = nn.functional.layer_norm(features, features.shape[-1:])
        weights = torch.softmax(self.weights, dim=0).to(features.dtype)
        return torch.einsum("blfd,l->bfd", features, weights)

    def layer_weights(self):
        """The current softmax weights, as a list of floats."""
        return torch.softmax(self.weights.detach().float(), dim=0).tolist()


def masked_mean(features, frame_mask):
    """Mean over the valid frames of each item (utterance-level pooling).

    Arguments
    ---------
    features : torch.Tensor
        ``[B, F, D]``.
    frame_mask : torch.Tensor
        ``[B, F]`` bool.

    Returns
    -------
    torch.Tensor
        ``[B, D]``.

    Example
    -------
    >>> masked_mean(torch.tensor([[[1.0], [3.0], [100.0]]]), torch.tensor([[True, True, False]]))
    tensor([[2.]])
    """
    weights = frame_mask.to(features.dtype).unsqueeze(-1)
    return (features * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def build_corruptor(
    noise_csv, rir_csv, seed=2024, snr_low=0.0, snr_high=20.0, sample_rate=16000, condition_probs=None
):
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
    simulated RIRs. No official noisy SUPERB protocol exists (REFERENCE.md section 4), so this choice is
    ours and configurable.

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
        See :func:`robustdistiller.prepare.prepare_rirs`.
    rirs_noises_subsets : sequence of str
        See :func:`robustdistiller.prepare.prepare_rirs`.
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

    Returns
    -------
    dict
        ``{"test": (noise_csv, rir_csv), "train": (noise_csv, rir_csv) or None}``.
    """
    lists = {"test": _prepare_lists(hparams, "test"), "train": None}
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

    ``test_condition_names`` (optional; a single name is a one-item list, null or ``[]`` keeps all)
    restricts ``test_conditions`` to a subset, in that order.
    The test corruptor is seeded with ``test_corruption_seed`` (the same for every upstream); the
    training one (``train_corruption: True``) draws clean / noise / reverb / both per utterance with
    ``train_condition_probs`` and SNRs in ``[train_snr_low, train_snr_high]``.

    Returns
    -------
    (Corruptor, Corruptor or None, dict)
    """
    lists = prepare_corruption_lists({**hparams, "skip_prep": True})
    test_noise, test_rirs = lists["test"]
    test_corruptor = build_corruptor(test_noise, test_rirs, seed=hparams.get("test_corruption_seed", 2024))
    conditions = dict(hparams["test_conditions"])
    names = as_list(hparams.get("test_condition_names"), "test_condition_names")
    if names:
        unknown = sorted(set(names) - set(conditions), key=str)
        if unknown:
            raise OptionError(
                f"Option `test_condition_names` names {unknown}, which are not in test_conditions "
                f"{sorted(conditions)}; pick among those (null runs them all)."
            )
        conditions = {name: conditions[name] for name in names}
    conditions = select_conditions(conditions, test_noise, test_rirs)
    train_corruptor = None
    if lists["train"] is not None:
        train_noise, train_rirs = lists["train"]
        train_corruptor = build_corruptor(
            train_noise,
            train_rirs,
            seed=hparams["seed"],
            snr_low=hparams.get("train_snr_low", 0.0),
            snr_high=hparams.get("train_snr_high", 20.0),
            condition_probs=hparams.get("train_condition_probs"),
        )
    return test_corruptor, train_corruptor, conditions


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


class AudioPipeline:
    """SpeechBrain dynamic item: ``(id, wav, start, stop)`` -> the (cropped, corrupted) waveform.

    Arguments
    ---------
    sample_rate : int
        Sample rate of the returned waveform (files are resampled and down-mixed).
    corruptor : Corruptor, optional
        Corrupts the audio (None: clean).
    condition : str, optional
        Forced condition (test sets); None draws one per utterance from the corruptor's
        probabilities (training on corrupted data).
    snr : float, optional
        Forced SNR of a noise condition.
    max_samples : int, optional
        Longest waveform; longer ones are cropped, at a random offset seeded by ``(seed, epoch, id)``
        when ``random_crop`` is True, else from the start.
    random_crop : bool
        See ``max_samples``.
    seed : int
        Base seed of random crops.
    key_prefix : str
        Mixed into the corruption seed (e.g. the condition name).

    Example
    -------
    >>> import tempfile, os, soundfile, numpy
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> soundfile.write(path, numpy.zeros(16000), 16000)
    >>> AudioPipeline(16000, max_samples=8000)("utt", path, 0, -1).shape
    torch.Size([8000])
    """

    def __init__(
        self,
        sample_rate=16000,
        corruptor=None,
        condition=None,
        snr=None,
        max_samples=None,
        random_crop=False,
        seed=0,
        key_prefix="",
    ):
        self.sample_rate = int(sample_rate)
        self.corruptor = corruptor
        self.condition = condition
        self.snr = snr
        self.max_samples = None if max_samples is None else int(max_samples)
        self.random_crop = bool(random_crop)
        self.seed = int(seed)
        self.key_prefix = key_prefix
        self.epoch = 0

    def set_epoch(self, epoch):
        """New random crops and corruption draws for every epoch."""
        self.epoch = int(epoch)
        if self.corruptor is not None:
            self.corruptor.set_epoch(epoch)

    def __call__(self, utterance_id, wav, start=0, stop=-1):
        start = int(start or 0)
        stop = None if stop is None or int(stop) < 0 else int(stop)
        waveform = load_audio(wav, sample_rate=self.sample_rate, start=start, stop=stop)
        if self.max_samples is not None and waveform.shape[0] > self.max_samples:
            offset = 0
            if self.random_crop:
                generator = torch.Generator().manual_seed(hash_seed(self.seed, self.epoch, utterance_id))
                offset = int(torch.randint(waveform.shape[0] - self.max_samples + 1, (1,), generator=generator))
            waveform = waveform[offset : offset + self.max_samples]
        if self.corruptor is not None:
            key = f"{self.key_prefix}{utterance_id}"
            waveform = self.corruptor(waveform, key=key, condition=self.condition, snr=self.snr).noisy
        return waveform


def audio_dataset(csv_file, pipeline, output_keys, replacements=None, extra_items=()):
    """A ``DynamicItemDataset`` over a recipe CSV with ``sig`` computed by ``pipeline``.

    Arguments
    ---------
    csv_file : str
        CSV with at least ``ID, wav, start, stop`` (``stop=-1``: to the end).
    pipeline : AudioPipeline
        Computes ``sig``.
    output_keys : list of str
        Keys of each batch (``id`` and ``sig`` are usual).
    replacements : dict, optional
        ``$placeholders`` of the CSV.
    extra_items : sequence
        More dynamic items (functions decorated with ``takes``/``provides``).

    Returns
    -------
    speechbrain.dataio.dataset.DynamicItemDataset
    """
    dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_file, replacements=replacements or {})

    @sb.utils.data_pipeline.takes("id", "wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def read_signal(utterance_id, wav, start, stop):
        return pipeline(utterance_id, wav, start, stop)

    dataset.add_dynamic_item(read_signal)
    for item in extra_items:
        dataset.add_dynamic_item(item)
    dataset.set_output_keys(list(output_keys))
    return dataset


def training_pipeline(hparams, corruptor=None):
    """The training :class:`AudioPipeline` of a recipe: random crops, optional corruption, epoch seeds.

    Reads ``sample_rate``, ``seed`` and ``max_train_samples`` (None keeps whole utterances).
    """
    return AudioPipeline(
        hparams["sample_rate"],
        corruptor=corruptor,
        max_samples=hparams.get("max_train_samples"),
        random_crop=True,
        seed=hparams["seed"],
        key_prefix="train/",
    )


def condition_test_set_factory(hparams, csv_file, corruptor, output_keys, extra_items=()):
    """``(name, spec) -> dataset``: the test set under one condition, for ``evaluate_conditions``.

    Every utterance is corrupted with the condition ``spec`` (``{"condition", "snr"}``), seeded by the
    condition name and the utterance id, so every upstream gets the same audio.
    """

    def make_test_set(name, spec):
        pipeline = AudioPipeline(
            hparams["sample_rate"],
            corruptor=corruptor,
            condition=spec["condition"],
            snr=spec.get("snr"),
            key_prefix=f"{name}/",
        )
        return audio_dataset(csv_file, pipeline, output_keys, extra_items=extra_items)

    return make_test_set


# ------------------------------------------------------------------------------------------------
# Start of a run: options, output folder lock, upstream identity
# ------------------------------------------------------------------------------------------------


class UpstreamChangedError(ChangedSettingsError):
    """The output folder holds a run of another upstream; resuming it would mix the two."""


def check_downstream_options(hparams):
    """Checks and normalises the options every downstream recipe reads, naming the option at fault.

    ``number_of_epochs`` must be an integer >= 1 (and ``number_of_updates``, where the recipe has it,
    null or >= 1); the list options of :data:`LIST_OPTIONS` become lists (a single string is a
    one-item list). ``hparams`` is updated in place.

    Raises
    ------
    robustdistiller.options.OptionError

    Example
    -------
    >>> options = {"number_of_epochs": 3, "test_condition_names": "clean", "test_musan_subsets": ["music"]}
    >>> check_downstream_options(options)
    >>> options["test_condition_names"], options["test_musan_subsets"]
    (['clean'], ['music'])
    >>> check_downstream_options({"number_of_epochs": 0})
    Traceback (most recent call last):
    ...
    robustdistiller.options.OptionError: Option `number_of_epochs` must be an integer >= 1, got 0.
    """
    hparams["number_of_epochs"] = integer_at_least(hparams.get("number_of_epochs"), "number_of_epochs", 1)
    if hparams.get("number_of_updates") is not None:
        hparams["number_of_updates"] = integer_at_least(hparams["number_of_updates"], "number_of_updates", 1)
    for name in LIST_OPTIONS:
        if name in hparams and hparams[name] is not None:
            hparams[name] = as_list(hparams[name], name)


def read_upstream_identity(save_folder):
    """The upstream identity recorded in ``<save_folder>/upstream.json``, or None when there is none."""
    path = os.path.join(save_folder, UPSTREAM_IDENTITY_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as fin:
        return json.load(fin)


def _describe_upstream(identity):
    source = identity.get("source_path") or identity.get("source")
    return f"'{source}' ({identity.get('kind')}, fingerprint {identity.get('fingerprint')})"


def check_upstream_identity(save_folder, upstream, record=True):
    """Refuses a run whose save folder was used with another upstream; records the upstream otherwise.

    The fields of :data:`IDENTITY_FIELDS` are compared (the weights fingerprint above all); the
    source is not: the same weights given by another spelling of their path, or a copy of them, are
    the same upstream.

    Arguments
    ---------
    save_folder : str
        The run's save folder (checkpoints; ``upstream.json`` is written there).
    upstream : FrozenUpstream
        This run's upstream.
    record : bool
        Write ``upstream.json`` when the folder has none (the main process does; the others only check).

    Returns
    -------
    dict or None
        The identity recorded before this call (None on a first run, which records this upstream's).

    Raises
    ------
    UpstreamChangedError
        Naming both upstreams (source and fingerprint), the differing fields and the fix.

    Example
    -------
    >>> import tempfile
    >>> from robustdistiller.teacher import save_random_teacher
    >>> save_folder = tempfile.mkdtemp()
    >>> first = FrozenUpstream(save_random_teacher(tempfile.mkdtemp(), model_type="hubert", seed=1))
    >>> check_upstream_identity(save_folder, first) is None  # first run: recorded
    True
    >>> check_upstream_identity(save_folder, first) == first.identity()
    True
    >>> other = FrozenUpstream(save_random_teacher(tempfile.mkdtemp(), model_type="hubert", seed=2))
    >>> check_upstream_identity(save_folder, other)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    robustdistiller.downstream.UpstreamChangedError: The save folder ... was used with another upstream...
    """
    identity = upstream.identity()
    recorded = read_upstream_identity(save_folder)
    if recorded is None:
        if record:
            if os.path.isdir(save_folder) and any(name.startswith("CKPT+") for name in os.listdir(save_folder)):
                logger.warning(
                    "%s has checkpoints but no %s (a run of an older version): which upstream they were "
                    "trained on cannot be checked; recording %s.",
                    save_folder, UPSTREAM_IDENTITY_FILE, _describe_upstream(identity),
                )
            os.makedirs(save_folder, exist_ok=True)
            path = os.path.join(save_folder, UPSTREAM_IDENTITY_FILE)
            with open(path + ".tmp", "w", encoding="utf-8") as fout:
                json.dump(identity, fout, indent=2)
            os.replace(path + ".tmp", path)
        return None
    differing = {
        field: (recorded.get(field, "<not recorded>"), identity[field])
        for field in IDENTITY_FIELDS
        if recorded.get(field, "<not recorded>") != identity[field]
    }
    if differing:
        lines = "\n".join(f"  {field}: recorded {old!r}, now {new!r}" for field, (old, new) in differing.items())
        raise UpstreamChangedError(
            f"The save folder {save_folder} was used with another upstream: resuming would test this "
            f"upstream with a head trained on that one, and credit it with the results.\n"
            f"  recorded upstream: {_describe_upstream(recorded)}\n"
            f"  this run's upstream: {_describe_upstream(identity)}\n"
            f"Differing fields:\n{lines}\n"
            f"Pick another --output_folder for this upstream (the default one, results/<task>/<upstream "
            f"name>/<seed>, differs between upstreams of different names), or delete the old run's folder."
        )
    return recorded


def start_run(hparams_file, hparams, overrides):
    """The start of every downstream run, before anything is written to its output folder.

    1. :func:`check_downstream_options`;
    2. on the main process, the exclusive lock of the output folder
       (:func:`~robustdistiller.run_folder.lock_output_folder`: a second run in the same folder stops
       with :class:`~robustdistiller.run_folder.OutputFolderInUse`);
    3. :func:`check_upstream_identity` of ``hparams["upstream"]`` (when it is a built
       :class:`FrozenUpstream`) against ``<save_folder>/upstream.json``, which the main process
       writes on a first run;
    4. ``speechbrain.create_experiment_directory`` (the YAML, the overrides and the log).

    Arguments
    ---------
    hparams_file : str
        The recipe's YAML.
    hparams : dict
        The loaded options (updated in place by the option checks).
    overrides : str or dict
        The command-line overrides.
    """
    check_downstream_options(hparams)
    main_process = sb.utils.distributed.if_main_process()
    if main_process:
        lock_output_folder(hparams["output_folder"])
    upstream = hparams.get("upstream")
    recorded = None
    if isinstance(upstream, FrozenUpstream):
        recorded = check_upstream_identity(hparams["save_folder"], upstream, record=main_process)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"], hyperparams_to_save=hparams_file, overrides=overrides
    )
    if not isinstance(upstream, FrozenUpstream):
        return
    identity = upstream.identity()
    if recorded is None:
        logger.info("Upstream %s recorded in %s", _describe_upstream(identity),
                    os.path.join(hparams["save_folder"], UPSTREAM_IDENTITY_FILE))
    elif (recorded.get("source_path") or recorded.get("source")) != (identity["source_path"] or identity["source"]):
        logger.info("Upstream %s has the weights recorded for this folder (given then as '%s'): resuming.",
                    _describe_upstream(identity), recorded.get("source_path") or recorded.get("source"))
    else:
        logger.info("Upstream %s is the one recorded for this folder: resuming.", _describe_upstream(identity))


class DownstreamBrain(sb.Brain):
    """Base Brain of the downstream recipes: a frozen upstream, a weighted layer sum and a head.

    Expected ``hparams``: ``upstream`` (:class:`FrozenUpstream`, *not* in ``modules``), and
    ``modules`` holding ``weighted_sum`` (:class:`WeightedLayerSum`) plus the task's head. Optional:
    ``train_pipeline`` (:class:`AudioPipeline`, re-seeded every epoch).
    Subclasses implement ``compute_forward`` (using :meth:`encode`), ``compute_objectives`` and
    ``on_stage_end``, and put the stage's metrics in ``self.stage_stats``.
    """

    def on_fit_start(self):
        """Moves the upstream to the device (it is not a module of the Brain) and keeps it frozen."""
        self.hparams.upstream.to(self.device).eval()
        super().on_fit_start()

    def on_evaluate_start(self, max_key=None, min_key=None):
        """Same as :meth:`on_fit_start` for ``evaluate`` without ``fit``."""
        self.hparams.upstream.to(self.device).eval()
        super().on_evaluate_start(max_key=max_key, min_key=min_key)

    def on_stage_start(self, stage, epoch=None):
        """Re-seeds the training pipeline's crops/corruption with the epoch."""
        pipeline = getattr(self.hparams, "train_pipeline", None)
        if stage == sb.Stage.TRAIN and pipeline is not None and epoch is not None:
            pipeline.set_epoch(epoch)

    def encode(self, wavs, wav_lens):
        """Upstream layers (no gradient) combined by the learnable weighted sum.

        Returns
        -------
        features : torch.Tensor
            ``[B, F, D]``.
        frame_mask : torch.Tensor
            ``[B, F]`` bool.
        """
        layers, frame_mask = self.hparams.upstream(wavs, wav_lens)
        return self.modules.weighted_sum(layers), frame_mask

    def layer_weights(self):
        """The weighted sum's softmax weights (which upstream layers the task uses)."""
        weighted_sum = self.modules.weighted_sum
        return getattr(weighted_sum, "module", weighted_sum).layer_weights()

    def on_fit_end(self):
        """Logs the layer weights."""
        weights = ", ".join(f"{index}: {weight:.3f}" for index, weight in enumerate(self.layer_weights()))
        logger.info("Weighted-sum layer weights: %s", weights)

    def _wrap_distributed(self):
        """DDP without SpeechBrain's SyncBatchNorm conversion on CPU (it only works on CUDA)."""
        if not self.distributed_launch or not str(self.device).startswith("cpu"):
            return super()._wrap_distributed()
        for name, module in self.modules.items():
            if any(parameter.requires_grad for parameter in module.parameters()):
                self.modules[name] = DistributedDataParallel(
                    module, device_ids=None, find_unused_parameters=self.find_unused_parameters
                )

    def evaluate_conditions(self, make_test_set, conditions, loader_kwargs, max_key=None, min_key=None):
        """Evaluates the best checkpoint on the test set of every condition.

        Arguments
        ---------
        make_test_set : callable
            ``(name, spec) -> dataset`` for a condition ``spec`` (``{"condition", "snr"}``).
        conditions : dict
            ``name -> spec``, e.g. :data:`DEFAULT_TEST_CONDITIONS`.
        loader_kwargs : dict
            Test DataLoader options.
        max_key, min_key : str, optional
            Checkpoint selection (e.g. ``max_key="accuracy"``).

        Returns
        -------
        dict
            ``name -> self.stage_stats`` of the test stage.
        """
        results = {}
        for name, spec in conditions.items():
            self.stage_stats, self.condition = {}, name
            self.evaluate(make_test_set(name, spec), max_key=max_key, min_key=min_key, test_loader_kwargs=loader_kwargs)
            results[name] = dict(self.stage_stats)
            logger.info("Test condition %s: %s", name, results[name])
        return results


def format_results_table(results, metric_names):
    """Markdown table: one row per condition, one column per metric."""
    header = "| condition | " + " | ".join(metric_names) + " |"
    rule = "|---|" + "---|" * len(metric_names)
    rows = [header, rule]
    for name, stats in results.items():
        cells = []
        for metric in metric_names:
            value = stats.get(metric)
            cells.append("-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value))
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def write_condition_results(output_folder, task, results, metric_names, upstream=None, layer_weights=None, extra=None):
    """Writes ``results.json`` and ``results.md`` (one row per test condition) to ``output_folder``.

    Arguments
    ---------
    output_folder : str
        The recipe's output folder.
    task : str
        Task name (KS, IC, ...).
    results : dict
        ``condition -> {metric: value}``.
    metric_names : list of str
        Metrics to put in the table (all are kept in the JSON).
    upstream : FrozenUpstream, optional
        Recorded as its :meth:`~FrozenUpstream.identity` (kind, source, weights fingerprint, layers,
        width, options, description).
    layer_weights : list of float, optional
        The weighted sum's weights.
    extra : dict, optional
        More fields for the JSON.

    Returns
    -------
    dict
        What was written to ``results.json``.
    """
    content = {"task": task, "results": results}
    if upstream is not None:
        content["upstream"] = upstream.identity()
    if layer_weights is not None:
        content["layer_weights"] = layer_weights
    content.update(extra or {})
    os.makedirs(output_folder, exist_ok=True)
    with open(os.path.join(output_folder, "results.json"), "w", encoding="utf-8") as fout:
        json.dump(content, fout, indent=2)
    lines = [f"# {task}: results per test condition", ""]
    if upstream is not None:
        lines += [f"Upstream: {upstream.description}", ""]
    lines.append(format_results_table(results, metric_names))
    if layer_weights is not None:
        lines += ["", "Layer weights: " + ", ".join(f"{index}: {weight:.3f}" for index, weight in enumerate(layer_weights))]
    with open(os.path.join(output_folder, "results.md"), "w", encoding="utf-8") as fout:
        fout.write("\n".join(lines) + "\n")
    logger.info("Results per condition written to %s/results.{json,md}", output_folder)
    return content


# ------------------------------------------------------------------------------------------------
# Utterance classification (KS, SID, ER): projector, mean pooling, linear classifier
# ------------------------------------------------------------------------------------------------


def _is_correct(logits, labels):
    """Per-item 1.0 / 0.0 correctness (a MetricStats metric)."""
    return (logits.argmax(dim=-1) == labels).float()


class UtteranceClassificationBrain(DownstreamBrain):
    """SUPERB utterance-level classification: projector, mean pooling over valid frames, linear.

    ``modules``: ``weighted_sum``, ``projector`` (``Linear(D -> P)``), ``classifier``
    (``Linear(P -> classes)``). Batches carry ``sig`` and ``label_encoded`` (see
    :func:`classification_datasets`). Cross-entropy; accuracy on dev and test; the checkpoint with the
    best dev accuracy is kept. ``self.stage_stats`` of a test stage: ``{"loss", "accuracy"}``.
    """

    def compute_forward(self, batch, stage):
        """Logits ``[B, classes]``."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        features, frame_mask = self.encode(wavs, wav_lens)
        pooled = masked_mean(self.modules.projector(features), frame_mask)
        return self.modules.classifier(pooled)

    def compute_objectives(self, predictions, batch, stage):
        """Cross-entropy; accumulates accuracy outside training."""
        labels = batch.label_encoded.data[:, 0].to(self.device)
        loss = nn.functional.cross_entropy(predictions, labels)
        if stage != sb.Stage.TRAIN:
            self.accuracy_metric.append(batch.id, predictions.detach(), labels)
        return loss

    def on_stage_start(self, stage, epoch=None):
        """New accuracy accumulator for dev and test."""
        super().on_stage_start(stage, epoch)
        if stage != sb.Stage.TRAIN:
            self.accuracy_metric = sb.utils.metric_stats.MetricStats(metric=_is_correct)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs, checkpoints on the best dev accuracy, records test statistics."""
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            return
        stats = {"loss": stage_loss, "accuracy": float(self.accuracy_metric.summarize("average"))}
        if stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]},
                train_stats={"loss": self.train_loss},
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(meta=stats, max_keys=["accuracy"])
        else:
            self.stage_stats = stats
            self.hparams.train_logger.log_stats(stats_meta={"test condition": getattr(self, "condition", "")},
                                                test_stats=stats)


def classification_datasets(hparams, csv_files, test_corruptor, train_corruptor=None, label_column="label"):
    """Datasets of an utterance-classification recipe, with the label encoder.

    Arguments
    ---------
    hparams : dict
        Reads ``sample_rate``, ``seed``, ``max_train_samples`` (random training crops; None keeps
        whole utterances), ``save_folder``.
    csv_files : dict
        ``{"train", "valid", "test"}`` CSVs with ``ID, duration, wav, start, stop, <label_column>``.
    test_corruptor : Corruptor
        Corrupts the test sets (:func:`build_corruptors`).
    train_corruptor : Corruptor, optional
        Corrupts the training set (``train_corruption: True``).
    label_column : str
        CSV column of the class.

    Returns
    -------
    dict
        ``train``, ``valid`` (datasets), ``make_test_set`` (``(name, spec) -> dataset``),
        ``label_encoder`` (``CategoricalEncoder`` fitted on train), ``train_pipeline``.
    """
    label_encoder = sb.dataio.encoder.CategoricalEncoder()

    @sb.utils.data_pipeline.takes(label_column)
    @sb.utils.data_pipeline.provides("label_encoded")
    def encode_label(label):
        return label_encoder.encode_label_torch(label)

    output_keys = ["id", "sig", "label_encoded"]
    train_pipeline = training_pipeline(hparams, train_corruptor)
    train = audio_dataset(csv_files["train"], train_pipeline, output_keys, extra_items=[encode_label])
    valid = audio_dataset(csv_files["valid"], AudioPipeline(hparams["sample_rate"]), output_keys,
                          extra_items=[encode_label])
    label_encoder.load_or_create(
        path=os.path.join(hparams["save_folder"], "label_encoder.txt"),
        from_didatasets=[train],
        output_key=label_column,
    )

    make_test_set = condition_test_set_factory(
        hparams, csv_files["test"], test_corruptor, output_keys, [encode_label]
    )
    return {
        "train": train,
        "valid": valid,
        "make_test_set": make_test_set,
        "label_encoder": label_encoder,
        "train_pipeline": train_pipeline,
    }
