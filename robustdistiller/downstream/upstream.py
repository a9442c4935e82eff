"""The frozen upstream of every downstream recipe, and the identity a run records of it.

* :class:`FrozenUpstream`: any upstream kind behind one interface -- our exported student folder, our
  distillation checkpoint, an s3prl-format checkpoint, a DPHuBERT-format ``.pth`` (DPWavLM; all through
  :func:`robustdistiller.export.loading.load_student`), or any Hugging Face WavLM / HuBERT / wav2vec 2.0 hub id
  or folder (the WavLM Base+ teacher row), or a student exported to ONNX (``onnx``: an ``encoder.onnx`` /
  ``encoder_int8.onnx`` of :mod:`robustdistiller.export.onnx`, run by ONNX Runtime). Frozen (no gradients, always eval, fp32) and kept out of the
  Brain's modules, so no upstream weight ever enters a downstream checkpoint.
* :meth:`FrozenUpstream.identity` and :func:`check_upstream_identity`: kind, source, weights
  fingerprint, layers, width and options, recorded in ``<save_folder>/upstream.json``; a rerun in that
  folder with another upstream is refused (:class:`UpstreamChangedError`) instead of resuming a head
  trained on the first one and crediting the second with its results.
* :func:`upstream_name`: the short, filesystem-safe name in the default output folder
  ``results/<task>/<upstream_name>/<seed>``.
"""

import hashlib
import json
import logging
import os
import re

import torch
import torch.nn as nn

from robustdistiller.dpwavlm.encoder import DPWavLMEncoder
from robustdistiller.export.errors import ExportError, UnfinishedRunError
from robustdistiller.export.folder import file_sha256
from robustdistiller.export.loading import load_student, locate_checkpoint
from robustdistiller.runs.fingerprint import weights_fingerprint
from robustdistiller.inference.interface import looks_like_path
from robustdistiller.inference.onnx_runtime import OnnxEncoder, resolve_onnx_file
from robustdistiller.runs.options import OptionError
from robustdistiller.runs.run_folder import ChangedSettingsError
from robustdistiller.models.student import num_parameters
from robustdistiller.models.teacher import FrozenTeacher, load_ssl_model

logger = logging.getLogger(__name__)


UPSTREAM_KINDS = ("auto", "student", "hf", "onnx")
STUDENT_LAYER0_CHOICES = ("projection", "encoder_input")


UPSTREAM_IDENTITY_FILE = "upstream.json"


# Fields of FrozenUpstream.identity() that must match for a run to resume: what the features are made
# of. The source (its spelling, or where a copy of the weights lives) is recorded but not compared.
IDENTITY_FIELDS = (
    "kind",
    "fingerprint",
    "num_layers",
    "hidden_size",
    "include_predictions",
    "per_utterance_norm",
    "student_layer0",
)


# Path components that say nothing about which model a path holds (our own folder and file names).
_GENERIC_PATH_PARTS = {
    "save",
    "student",
    "model",
    "checkpoint",
    "checkpoints",
    "export",
    "exported",
    "final",
    "pruned",
    "dpwavlm",
}


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
        s3prl-format ``.ckpt``, DPHuBERT-format ``.pth`` (a DPWavLM run's ``final.pth`` or output folder, an
        exported DPWavLM folder, the released DPWavLM / RDDPWavLM files: 13 states, layer 0 the projection
        output as DPHuBERT, no prediction heads), or a Hugging Face hub id / folder of a WavLM, HuBERT or
        wav2vec 2.0.
    kind : str
        ``"auto"`` (a folder or file our :func:`~robustdistiller.export.loading.locate_checkpoint` recognises
        is a student, anything else a Hugging Face model; hub ids are Hugging Face models),
        ``"student"``, ``"hf"`` or ``"onnx"`` (an ONNX file of :mod:`robustdistiller.export.onnx`, or an
        exported folder with ``onnx/encoder.onnx``; ``auto`` picks it for a ``.onnx`` file). The ONNX
        graph gives the student's layers (same ``student_layer0`` and ``include_predictions`` rules) and
        has the student's per-utterance normalisation setting built in.
    include_predictions : bool
        For students, append the prediction heads' outputs (estimates of the teacher's layers) to the
        hidden states, as s3prl's distiller upstream does (DistilHuBERT's SUPERB numbers use them).
    per_utterance_norm : bool
        First CNN GroupNorm over each utterance's own samples, so features do not depend on the
        padding of a batch (students trained by our recipe use it; for other models it removes the
        batch-composition dependence of plain Hugging Face).
    cache_dir : str, optional
        Hugging Face cache folder.
    student_layer0 : str
        State 0 of a student: ``"projection"`` (default, s3prl's distiller upstream and so SUPERB's
        DistilHuBERT / RobustDistiller numbers: the feature projection's output *before* the
        positional convolution and the encoder LayerNorm, padded frames zeroed) or
        ``"encoder_input"`` (Hugging Face's ``hidden_states[0]``, after both). A student's states are
        then layer 0, its transformer layers and (``include_predictions``) its prediction heads: six
        for the 2-layer student. Teachers always give Hugging Face's 13 states, as s3prl.

    Example
    -------
    >>> import tempfile
    >>> from robustdistiller.models.teacher import save_random_teacher
    >>> upstream = FrozenUpstream(save_random_teacher(tempfile.mkdtemp(), model_type="hubert"))
    >>> features, frame_mask = upstream(torch.randn(2, 16000), torch.tensor([1.0, 0.5]))
    >>> upstream.kind, upstream.num_layers, features.shape, frame_mask.sum(dim=1).tolist()
    ('hf', 13, torch.Size([2, 13, 49, 64]), [49, 24])
    """

    def __init__(
        self,
        source,
        kind="auto",
        include_predictions=True,
        per_utterance_norm=True,
        cache_dir=None,
        student_layer0="projection",
    ):
        super().__init__()
        if kind not in UPSTREAM_KINDS:
            raise ValueError(f"upstream kind must be one of {UPSTREAM_KINDS}, got {kind!r}")
        source = os.fspath(source)
        self.source = source
        if kind == "auto":
            kind = self._detect_kind(source)
        self.kind = kind
        if student_layer0 not in STUDENT_LAYER0_CHOICES:
            raise OptionError(
                f"upstream student_layer0 must be one of {STUDENT_LAYER0_CHOICES}, got {student_layer0!r}"
            )
        self.student_layer0 = student_layer0 if kind in ("student", "onnx") else "encoder_input"
        self.include_predictions = bool(include_predictions)
        self.per_utterance_norm = bool(per_utterance_norm)
        self._identity = None
        if kind == "onnx":
            self._init_onnx(source)
        elif kind == "student":
            student, info = load_student(source, per_utterance_norm=per_utterance_norm)
            self.model = student
            self.description = f"student from {info['source']} ({info['format']}, step {info['step']})"
            if isinstance(student, DPWavLMEncoder):  # a DPHuBERT .pth: 13 states, no prediction heads
                self.hidden_size = student.hidden_size
                self.num_layers = student.num_layers + 1
                if self.include_predictions:
                    logger.info("%s has no prediction heads: include_predictions does not apply", source)
                    self.include_predictions = False
            else:
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
            model = load_ssl_model(source, cache_dir=cache_dir, option="upstream_source")
            layers = tuple(range(model.config.num_hidden_layers + 1))
            self.model = FrozenTeacher(model, target_layers=layers, per_utterance_norm=per_utterance_norm)
            self.description = f"{type(model).__name__} from {source}"
            self.hidden_size = model.config.hidden_size
            self.num_layers = len(layers)
        if kind != "onnx":
            self.model.requires_grad_(False)
        self.train(False)
        logger.info(
            "Upstream: %s, %d layers of %d dims, %s parameters (frozen)",
            self.description,
            self.num_layers,
            self.hidden_size,
            "ONNX" if kind == "onnx" else f"{num_parameters(self.model):,}",
        )

    def _init_onnx(self, source):
        """The ``onnx`` kind: an :class:`~robustdistiller.inference.onnx_runtime.OnnxEncoder` session."""
        try:  # a folder: its onnx/encoder.onnx (the fp32 file), as OnnxEncoder picks it
            path = resolve_onnx_file(source)
        except FileNotFoundError as error:
            raise ExportError(f"Upstream source (kind onnx): {error}") from error
        try:
            encoder = OnnxEncoder(path, num_threads=torch.get_num_threads())
        except Exception as error:
            raise ExportError(f"Cannot load the ONNX upstream '{path}': {error}") from error
        self.onnx_path = os.path.abspath(path)
        self.model = encoder
        if encoder.per_utterance_norm != self.per_utterance_norm:
            logger.warning(
                "%s was exported with per_utterance_norm=%s (built into the graph); the option %s is ignored",
                path,
                encoder.per_utterance_norm,
                self.per_utterance_norm,
            )
            self.per_utterance_norm = encoder.per_utterance_norm
        if not encoder.has_predictions and self.include_predictions:  # a DPWavLM file
            logger.info("%s has no prediction heads: include_predictions does not apply", path)
            self.include_predictions = False
        self.description = f"ONNX {encoder.model_type} {path} ({encoder.quantization or 'fp32'})"
        self.hidden_size = encoder.hidden_size
        self.num_layers = encoder.num_layers + 1
        if self.include_predictions:
            if encoder.target_size != self.hidden_size:
                raise ValueError(
                    f"Upstream '{source}': prediction heads of width {encoder.target_size} cannot be summed "
                    f"with hidden states of width {self.hidden_size}; set include_predictions to False"
                )
            self.num_layers += len(encoder.target_layers)

    def identity(self):
        """What this upstream is, as recorded in ``upstream.json`` and ``results.json``.

        Returns
        -------
        dict
            ``kind`` (``student``, ``hf`` or ``onnx``, never ``auto``), ``source`` (as given), ``source_path``
            (absolute path of a local source, None for a hub id), ``fingerprint``
            (:func:`~robustdistiller.runs.fingerprint.weights_fingerprint` of the frozen weights, which
            identifies the upstream whatever path it was loaded from; for ``onnx`` the SHA-256 of the file),
            ``num_layers`` and
            ``hidden_size`` (of the features the head sees), ``include_predictions`` (always False
            for Hugging Face models, which have no prediction heads), ``per_utterance_norm`` and
            ``description``. The weights are frozen, so this is computed once.

        Example
        -------
        >>> import tempfile
        >>> from robustdistiller.models.teacher import save_random_teacher
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
                "fingerprint": (
                    file_sha256(self.onnx_path)[:16] if self.kind == "onnx" else weights_fingerprint(self.model)
                ),
                "num_layers": self.num_layers,
                "hidden_size": self.hidden_size,
                "include_predictions": self.kind in ("student", "onnx") and self.include_predictions,
                "per_utterance_norm": self.per_utterance_norm,
                "student_layer0": self.student_layer0,
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
        if os.path.isfile(expanded) and expanded.endswith(".onnx"):
            return "onnx"
        try:
            locate_checkpoint(expanded)
            return "student"
        except UnfinishedRunError:
            raise  # our run, not a Hugging Face folder: its message says what is missing
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
            if self.kind == "onnx":
                return self._forward_onnx(wavs, wav_lens)
            output = self.model(wavs, wav_lens)
            layers = list(output.hidden_states)
            if self.student_layer0 == "projection":
                layers[0] = output.projection
            if self.include_predictions:
                layers += list(output.predictions.unbind(dim=1))
            return torch.stack(layers, dim=1).float(), output.frame_mask

    def _forward_onnx(self, wavs, wav_lens):
        """The ONNX session's layers, in the student kind's order, as torch tensors on ``wavs``' device."""
        lengths = None if wav_lens is None else wav_lens.detach().float().cpu().numpy()
        output = self.model.encode_batch(wavs.detach().cpu().numpy(), lengths)
        hidden = torch.from_numpy(output.hidden_states)  # [B, N + 1, F, D]
        layers = list(hidden.unbind(dim=1))
        if self.student_layer0 == "projection":
            layers[0] = torch.from_numpy(output.projection)
        if self.include_predictions and output.predictions is not None:  # a DPWavLM file has no heads
            layers += list(torch.from_numpy(output.predictions).unbind(dim=1))
        frame_mask = torch.from_numpy(output.frame_mask)
        return torch.stack(layers, dim=1).to(wavs.device), frame_mask.to(wavs.device)


class UpstreamChangedError(ChangedSettingsError):
    """The output folder holds a run of another upstream; resuming it would mix the two."""


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
    >>> from robustdistiller.models.teacher import save_random_teacher
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
    robustdistiller.downstream.upstream.UpstreamChangedError: The save folder ... was used with another upstream...
    """
    identity = upstream.identity()
    recorded = read_upstream_identity(save_folder)
    if recorded is None:
        if record:
            if os.path.isdir(save_folder) and any(name.startswith("CKPT+") for name in os.listdir(save_folder)):
                logger.warning(
                    "%s has checkpoints but no %s (a run of an older version): which upstream they were "
                    "trained on cannot be checked; recording %s.",
                    save_folder,
                    UPSTREAM_IDENTITY_FILE,
                    _describe_upstream(identity),
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
