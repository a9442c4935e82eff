"""Content fingerprints of model weights: which weights a run used, whatever path they were loaded from.

A source string (a hub id, a relative or absolute path, a copy of a folder) does not identify a
model; its weights do. :func:`weights_fingerprint` hashes every parameter and buffer -- name, dtype,
shape and raw bytes -- so two loads of the same weights give the same short hex string on any device,
and any changed value, renamed tensor or changed dtype gives another. The downstream recipes record
the fingerprint of their frozen upstream (``<save_folder>/upstream.json``) and the distillation recipe
that of its teacher, and refuse to resume a run with other weights.

The run signature (:mod:`robustdistiller.runs.run_folder`) also holds :func:`list_fingerprint` of every
prepared list (what the data is, not where it lies) and :func:`architecture_fingerprint` of every
trained module (the shapes a checkpoint must match).
"""

import hashlib
import os
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


#: Columns of the prepared lists that hold where a file is, not what it is: left out of
#: :func:`list_fingerprint`, so a corpus moved to another disk (re-prepared) signs the same.
PATH_COLUMNS = ("wav",)


def list_fingerprint(csv_path, path_columns=PATH_COLUMNS, length=FINGERPRINT_LENGTH):
    """What a prepared list holds, as text: its row count and a hash of its content without paths.

    Every column but the file paths (``ID``, ``duration``, speaker, transcript, format... of the
    lists written by :mod:`robustdistiller.data.prepare`) is hashed, rows in ID order: the same utterances
    (or noise / RIR files) prepared from another folder give the same fingerprint; another corpus,
    another subset, another noise pool or files added or removed give another one.

    Arguments
    ---------
    csv_path : str
        A CSV written by the preparation (header row first; an ``ID`` column).
    path_columns : sequence of str
        Columns left out (where the files are).
    length : int
        Hex digits of the hash kept.

    Returns
    -------
    str
        ``"<rows> rows, sha256 <hex>"``.

    Raises
    ------
    FileNotFoundError
        Naming the list when it does not exist.

    Example
    -------
    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> first, second = os.path.join(folder, "a.csv"), os.path.join(folder, "b.csv")
    >>> _ = open(first, "w").write("ID,duration,wav\\nu1,1.5,/disk1/u1.flac\\nu2,2.0,/disk1/u2.flac\\n")
    >>> _ = open(second, "w").write("ID,duration,wav\\nu2,2.0,/disk2/u2.flac\\nu1,1.5,/disk2/u1.flac\\n")
    >>> list_fingerprint(first) == list_fingerprint(second)  # moved and reordered: the same content
    True
    >>> list_fingerprint(first).split(",")[0]
    '2 rows'
    """
    import csv

    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"The prepared list '{csv_path}' does not exist (its preparation did not run)")
    with open(csv_path, newline="", encoding="utf-8") as fin:
        reader = csv.reader(fin)
        header = next(reader, [])
        kept = [index for index, name in enumerate(header) if name not in path_columns]
        rows = sorted([row[index] if index < len(row) else "" for index in kept] for row in reader)
    digest = hashlib.sha256()
    digest.update(("\0".join(header[index] for index in kept) + "\n").encode("utf-8"))
    for row in rows:
        digest.update(("\0".join(row) + "\n").encode("utf-8"))
    return f"{len(rows)} rows, sha256 {digest.hexdigest()[: int(length)]}"


def architecture_fingerprint(module, length=8):
    """The shape of a module, as text: parameter count and a hash of every tensor's name and shape.

    Values do not matter (training changes them), only what a checkpoint of the module must match:
    an edited ``hidden_size``, another number of layers or another input size gives another one.

    Example
    -------
    >>> architecture_fingerprint(torch.nn.Linear(3, 2)) == architecture_fingerprint(torch.nn.Linear(3, 2))
    True
    >>> [architecture_fingerprint(torch.nn.Linear(inputs, 2)).split(",")[0] for inputs in (3, 4)]
    ['8 parameters', '10 parameters']
    """
    state = module.state_dict()
    parameters = {name for name, _ in module.named_parameters()}
    digest = hashlib.sha256()
    total = 0
    for name in sorted(state):
        if torch.is_tensor(state[name]):
            digest.update(f"{name}\0{tuple(state[name].shape)}\n".encode("utf-8"))
            if name in parameters:
                total += state[name].numel()
    return f"{total} parameters, shapes {digest.hexdigest()[: int(length)]}"
