"""Content fingerprints of model weights: which weights a run used, whatever path they were loaded from.

A source string (a hub id, a relative or absolute path, a copy of a folder) does not identify a
model; its weights do. :func:`weights_fingerprint` hashes every parameter and buffer -- name, dtype,
shape and raw bytes -- so two loads of the same weights give the same short hex string on any device,
and any changed value, renamed tensor or changed dtype gives another. The downstream recipes record
the fingerprint of their frozen upstream (``<save_folder>/upstream.json``) and the distillation recipe
that of its teacher, and refuse to resume a run with other weights.
"""

import hashlib
import logging

import torch

logger = logging.getLogger(__name__)

FINGERPRINT_LENGTH = 16  # hex digits kept from the SHA-256 (64 bits: no accidental collision)


def weights_fingerprint(module_or_state_dict, length=FINGERPRINT_LENGTH):
    """Short hex SHA-256 over the names, dtypes, shapes and bytes of every parameter and buffer.

    Entries are hashed in sorted name order, so the fingerprint does not depend on the order of a
    state dict; tensors are hashed as their raw bytes on the CPU (one copy per tensor on GPU, no
    Python loop over elements: about a second for a 95M-parameter model), so it does not depend on
    the device either. Non-tensor entries of a state dict (extra state) are ignored. Whether a
    tensor requires gradients, and which module classes hold the tensors, do not matter: only what
    the weights are.

    Arguments
    ---------
    module_or_state_dict : torch.nn.Module or dict
        A module (its ``state_dict()``: parameters and persistent buffers) or a state dict.
    length : int
        Hex digits kept (at most 64).

    Returns
    -------
    str
        ``length`` lowercase hex digits.

    Raises
    ------
    ValueError
        For tensors without data (``meta`` device), which have nothing to hash.

    Example
    -------
    >>> layer = torch.nn.Linear(2, 2)
    >>> _ = torch.nn.init.zeros_(layer.weight), torch.nn.init.zeros_(layer.bias)
    >>> weights_fingerprint(layer) == weights_fingerprint({"bias": torch.zeros(2), "weight": torch.zeros(2, 2)})
    True
    >>> weights_fingerprint(layer) == weights_fingerprint({"weight": torch.zeros(2, 2), "bias": torch.ones(2)})
    False
    >>> weights_fingerprint({"w": torch.zeros(4)}) == weights_fingerprint({"w": torch.zeros(2, 2)})  # shape
    False
    >>> len(weights_fingerprint(layer))
    16
    """
    if isinstance(module_or_state_dict, torch.nn.Module):
        state = module_or_state_dict.state_dict()
    elif isinstance(module_or_state_dict, dict):
        state = module_or_state_dict
    else:
        raise TypeError(
            f"weights_fingerprint needs a torch.nn.Module or a state dict, not {type(module_or_state_dict).__name__}"
        )
    digest = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        if not torch.is_tensor(value):
            continue
        if value.is_meta:
            raise ValueError(f"Tensor '{name}' is on the meta device (no data): load the weights before fingerprinting")
        tensor = value.detach().cpu().contiguous()
        header = f"{name}\0{str(tensor.dtype).replace('torch.', '')}\0{tuple(tensor.shape)}\0{tensor.numel()}\n"
        digest.update(header.encode("utf-8"))
        if tensor.numel():
            # raw bytes of any dtype (bfloat16 and bool included), hashed without a Python-side copy
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[: int(length)]
