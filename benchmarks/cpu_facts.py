"""What a CPU timing depends on, for the benchmark scripts: the CPU model, its int8/vector flags, threads, versions.

Timings move with the CPU: int8 kernels in particular (ONNX Runtime's ``QLinearConv`` / ``MatMulInteger``) run
on AVX2, AVX-512 with VNNI (``avx512_vnni``: int8 dot products in one instruction), AVX-VNNI or AMX (``amx_int8``:
tile matrix units) at very different speeds, and PyTorch's fp32 kernels on AVX2 vs AVX-512. Every benchmark
prints :func:`describe` at the top and stores :func:`cpu_facts` in its JSON, so a table says where it was
measured. Read from ``/proc/cpuinfo`` (Linux); elsewhere the model is ``platform.processor()`` and no flags.

Run ``python benchmarks/cpu_facts.py`` to print them.
"""

import importlib
import os
import platform

#: ``/proc/cpuinfo`` flags that matter for fp32 / int8 inference speed, with the names we print.
RELEVANT_FLAGS = {
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "amx_tile": "AMX",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
}
LIBRARIES = ("numpy", "torch", "onnxruntime", "onnx", "transformers", "speechbrain")


def parse_cpuinfo(text):
    """``(model name, set of flags)`` of the first processor in a ``/proc/cpuinfo`` text.

    Example
    -------
    >>> text = "processor : 0\\nmodel name : Some CPU\\nflags : fpu avx2 avx512f\\n\\nprocessor : 1\\n"
    >>> model, flags = parse_cpuinfo(text)
    >>> model, sorted(flags)
    ('Some CPU', ['avx2', 'avx512f', 'fpu'])
    """
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def library_versions(names=LIBRARIES):
    """``{name: version}`` of the installed libraries among ``names`` (absent ones are left out)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.import_module(name).__version__
        except Exception:  # not installed, or a broken install: the benchmark says what it could import
            continue
    return versions


def cpu_facts(threads=None, cpuinfo_path="/proc/cpuinfo"):
    """The CPU model, its relevant flags, the core and thread counts and library versions (a JSON-ready dict).

    Arguments
    ---------
    threads : int, optional
        The intra-op threads the benchmark uses.
    cpuinfo_path : str
        Where to read the CPU's description.
    """
    model, flags = None, set()
    try:
        with open(cpuinfo_path, encoding="utf-8") as fin:
            model, flags = parse_cpuinfo(fin.read())
    except OSError:
        pass
    return {
        "cpu_model": model or platform.processor() or platform.machine(),
        "cpu_flags": [name for flag, name in RELEVANT_FLAGS.items() if flag in flags],
        "cpu_flags_read": bool(flags),
        "logical_cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": threads,
        "python": platform.python_version(),
        "libraries": library_versions(),
    }


def describe(facts):
    """Two lines of :func:`cpu_facts` for the top of a benchmark's output.

    Example
    -------
    >>> facts = {"cpu_model": "Some CPU", "cpu_flags": ["AVX2"], "cpu_flags_read": True, "logical_cpus": 4,
    ...          "affinity_cpus": 4, "threads": 2, "python": "3.11.0", "libraries": {"torch": "2.0"}}
    >>> print(describe(facts))
    CPU: Some CPU; flags: AVX2; 4 logical CPUs (4 usable); 2 threads
    Python 3.11.0; torch 2.0
    """
    flags = ", ".join(facts["cpu_flags"]) or ("none of the relevant ones" if facts["cpu_flags_read"] else "unknown")
    threads = f"; {facts['threads']} threads" if facts.get("threads") else ""
    versions = "; ".join(f"{name} {version}" for name, version in facts["libraries"].items())
    return (
        f"CPU: {facts['cpu_model']}; flags: {flags}; {facts['logical_cpus']} logical CPUs "
        f"({facts['affinity_cpus']} usable){threads}\nPython {facts['python']}; {versions}"
    )


if __name__ == "__main__":
    print(describe(cpu_facts()))
