"""What an export folder holds: the names of the files an export reads and writes, and the heads' layout.

The files of an export of a DistilHuBERT-layout student are written by :mod:`robustdistiller.export.student_folder`
and read back by :mod:`robustdistiller.export.loading`; a DPWavLM's export (:mod:`robustdistiller.dpwavlm.export`)
holds ``dpwavlm.pth`` instead. The prediction heads' split linear (``[K, I, T]``) is stored as a grouped 1x1
``Conv1d`` (:func:`split_to_grouped_conv`), a module SpeechBrain's ``hyperparams.yaml`` can build.
"""

from robustdistiller.inference.onnx_runtime import FP32_FILE, INT8_FILE, ONNX_FOLDER

TRAINING_INFO_FILE = "distillation_info.json"
INTERFACE_FILE = "custom_interface.py"
# The padding-safe transformers model class (named by config.json's auto_map) and SpeechBrain lobe.
MODELING_FILE = "modeling_robustdistiller.py"
AUTO_MAP = {"AutoModel": "modeling_robustdistiller.PaddingSafeHubertModel"}
S3PRL_FILE = "s3prl_distiller.ckpt"
HEAD_FILES = ("prediction_expand.ckpt", "prediction_split.ckpt")
DPHUBERT_EXTENSION = ".pth"  # DPHuBERT's checkpoints (s3prl's are .ckpt)
DPWAVLM_EXPORT_FILE = "dpwavlm.pth"  # the compact model in an export of a DPWavLM (robustdistiller.dpwavlm.export)
# The ONNX encoders (written with --onnx / --int8), named where OnnxEncoder looks for them.
ONNX_FILES = (f"{ONNX_FOLDER}/{FP32_FILE}", f"{ONNX_FOLDER}/{INT8_FILE}")
# Files an export writes (the heads and the s3prl file only when asked for), besides the manifest.
EXPORT_FILES = (
    "hyperparams.yaml",
    "encoder.ckpt",
    *HEAD_FILES,
    INTERFACE_FILE,
    MODELING_FILE,
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "README.md",
    S3PRL_FILE,
    *ONNX_FILES,
)


def split_to_grouped_conv(split_weight, split_bias):
    """Training-layout split linear (``[K, I, T]``, ``[K, T]``) to a grouped ``Conv1d``'s parameters.

    Example
    -------
    >>> import torch
    >>> weight, bias = split_to_grouped_conv(torch.randn(3, 4, 2), torch.randn(3, 2))
    >>> weight.shape, bias.shape
    (torch.Size([6, 4, 1]), torch.Size([6]))
    >>> w, b = grouped_conv_to_split(weight, bias, num_targets=3)
    >>> w.shape, b.shape
    (torch.Size([3, 4, 2]), torch.Size([3, 2]))
    """
    num_targets, inner_size, target_size = split_weight.shape
    weight = split_weight.permute(0, 2, 1).reshape(num_targets * target_size, inner_size, 1)
    return weight.contiguous(), split_bias.reshape(-1).contiguous()


def grouped_conv_to_split(weight, bias, num_targets):
    """Inverse of :func:`split_to_grouped_conv`."""
    channels, inner_size, _ = weight.shape
    target_size = channels // num_targets
    split_weight = weight[:, :, 0].reshape(num_targets, target_size, inner_size).permute(0, 2, 1)
    return split_weight.contiguous(), bias.reshape(num_targets, target_size).contiguous()
