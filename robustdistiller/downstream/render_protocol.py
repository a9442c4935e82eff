"""Renders a recipe's corrupted test sets to files: portable test sets for s3prl / ESPnet users.

``python -m robustdistiller.downstream.render_protocol <recipe> <preset> <out> --save_folder=... [--option=value]``
writes, under ``<out>``:

- ``<condition>/<utterance>.wav``: the corrupted test audio (16 kHz mono, 32-bit float WAV: the samples the
  recipe scores, unrounded);
- ``manifest.csv``: one row per file: ``utterance, condition, wav, noise_file, noise_offset, snr, rir_file,
  seed, parameters`` (the draws; ``parameters`` is JSON of the other draws, e.g. the pitch shift);
- ``SHA256SUMS``: ``sha256sum -c``-compatible checksums of every WAV and of the manifest.

The audio is made by the same code path as a recipe's test (:func:`~robustdistiller.downstream.data.condition_pipeline`
with the protocol's corruptor and condition seeds), so a recipe run with ``test_audio_manifest: <out>/manifest.csv``
scores exactly the audio it would have made on the fly. ``<recipe>`` is a task name of
:data:`robustdistiller.downstream.tasks.TASKS` (``KS``...); ``--save_folder`` is the recipe's prepared
``save_folder`` (its ``test.csv`` is read; ``--test_csv`` overrides). The options are the recipe YAML's
corruption options (``--test_musan_folder``, ``--test_rir_folder``, ``--test_wham_folder``...,
``--test_corruption_seed``, ``--test_condition_names``).
"""

import csv
import hashlib
import json
import logging
import os
import sys

import scipy.io.wavfile
import yaml

from robustdistiller.downstream.data import condition_pipeline
from robustdistiller.downstream.protocol import DEFAULT_TEST_CONDITIONS, build_corruptors, prepare_corruption_lists
from robustdistiller.downstream.protocols import PRESET_NAMES, ProtocolCorruptor, read_manifest  # noqa: F401 (re-exported)
from robustdistiller.downstream.tasks import TASKS
from robustdistiller.runs.options import OptionError

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS = (
    "utterance",
    "condition",
    "wav",
    "noise_file",
    "noise_offset",
    "snr",
    "rir_file",
    "seed",
    "parameters",
)
RECIPE_DEFAULTS = {
    "sample_rate": 16000,
    "test_corruption_seed": 2024,
    "test_musan_subsets": ["music", "speech"],
    "test_noise_folders": [],
    "test_rir_format": "rirs_noises",
    "test_rirs_noises_subsets": ["simulated"],
    "test_conditions": DEFAULT_TEST_CONDITIONS,
}
"""The recipe YAMLs' shared corruption block (identical in every recipe: tests/consistency)."""


class _CorruptorRecorder:
    """Records the files and offsets a :class:`~robustdistiller.data.corruption.Corruptor` draws.

    It wraps the draw methods of the corruptor's noise pool and RIR list on those instances only, so the
    draws (global torch RNG inside the corruptor's seeded ``fork_rng``) are unchanged.
    """

    def __init__(self, corruptor):
        self.events, self.offset = [], 0
        pool = getattr(corruptor.file_noise, "noise_funct", None) if corruptor.file_noise is not None else None
        if pool is not None and hasattr(pool, "_read_segment"):
            read_segment = pool._read_segment

            def recorded_read_segment(index, num_samples):
                self.offset = 0
                segment, whole_file = read_segment(index, num_samples)
                # a file shorter than the utterance is tiled from a random circular offset: no file offset
                self.events.append(("noise", pool.files.paths[index], "" if whole_file else self.offset))
                return segment, whole_file

            pool._read_segment = recorded_read_segment
            self._wrap_offsets(pool)
        if corruptor.reverb is not None and hasattr(corruptor.reverb, "files"):
            files = corruptor.reverb.files
            draw_index = files.draw_index

            def recorded_draw_index():
                index = draw_index()
                self.events.append(("rir", files.paths[index], None))
                return index

            files.draw_index = recorded_draw_index

    def _wrap_offsets(self, pool):
        read = pool._read

        def recorded_read(index, start=0, stop=None):
            if start:
                self.offset = int(start)
            return read(index, start, stop)

        pool._read = recorded_read

    def take(self):
        """The last utterance's ``(noise_file, noise_offset, rir_file)`` (offset in the file's samples)."""
        noise = [event for event in self.events if event[0] == "noise"]
        rirs = [event for event in self.events if event[0] == "rir"]
        self.events = []
        noise_file, offset = (noise[-1][1], noise[-1][2]) if noise else ("", "")
        return noise_file, offset, (rirs[-1][1] if rirs else "")


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fin:
        for block in iter(lambda: fin.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_test_list(test_csv):
    if not os.path.isfile(test_csv):
        raise OptionError(
            f"Test list '{test_csv}' not found (option `save_folder` or `test_csv`): prepare the recipe first."
        )
    with open(test_csv, newline="", encoding="utf-8") as fin:
        return list(csv.DictReader(fin))


def render(recipe, protocol, output_folder, options):
    """Writes the corrupted test audio, ``manifest.csv`` and ``SHA256SUMS``; returns the manifest path.

    Arguments
    ---------
    recipe : str
        A task name of :data:`~robustdistiller.downstream.tasks.TASKS` (``KS``, ``ASR``...).
    protocol : str
        One of :data:`~robustdistiller.downstream.protocols.PRESET_NAMES`.
    output_folder : str
        Where the files go (created; an existing ``manifest.csv`` there is an error: nothing is overwritten).
    options : dict
        Recipe options: ``save_folder`` (required), ``test_csv``, the corruption options.
    """
    if recipe not in TASKS:
        raise OptionError(f"Recipe {recipe!r} is not a task; expected one of {sorted(TASKS)}.")
    if protocol not in PRESET_NAMES:
        raise OptionError(f"Protocol {protocol!r} unknown; expected one of {list(PRESET_NAMES)}.")
    if "save_folder" not in options:
        raise OptionError("Option `save_folder` is required: the recipe's prepared save_folder (holding test.csv).")
    hparams = {**RECIPE_DEFAULTS, **options, "test_protocol": protocol}
    manifest_path = os.path.join(output_folder, "manifest.csv")
    if os.path.exists(manifest_path):
        raise FileExistsError(f"'{manifest_path}' exists: render into a new folder (nothing is overwritten).")
    rows = _read_test_list(hparams.get("test_csv") or os.path.join(hparams["save_folder"], "test.csv"))
    prepare_corruption_lists(hparams)
    corruptor, _, conditions = build_corruptors(hparams)
    recorder = None if isinstance(corruptor, ProtocolCorruptor) else _CorruptorRecorder(corruptor)
    os.makedirs(output_folder, exist_ok=True)
    manifest, written = [], []
    for name, spec in conditions.items():
        if "input" in spec:  # a released condition (SE's noisy test set): nothing to render
            continue
        pipeline = condition_pipeline(hparams["sample_rate"], corruptor, spec)
        os.makedirs(os.path.join(output_folder, name), exist_ok=True)
        for row in rows:
            utterance = row["ID"]
            waveform = pipeline(utterance, row["wav"], row.get("start", 0), row.get("stop", -1))
            relative = f"{name}/{utterance}.wav"
            # scipy writes no timestamp (libsndfile's float WAVs carry a PEAK chunk with one): same audio, same bytes
            scipy.io.wavfile.write(os.path.join(output_folder, relative), hparams["sample_rate"], waveform.numpy())
            written.append(relative)
            key = f"{pipeline.key_prefix}{utterance}"
            entry = {"utterance": utterance, "condition": name, "wav": relative, "snr": spec.get("snr", "")}
            if recorder is not None:
                entry["noise_file"], entry["noise_offset"], entry["rir_file"] = recorder.take()
                entry["seed"] = corruptor.item_seed(key)
                entry["parameters"] = ""
            else:
                draws = corruptor.draw(key, spec["condition"], spec.get("snr"), waveform.shape[0])
                noise = [step for step in draws["steps"] if step["step"] == "noise"]
                rirs = [step for step in draws["steps"] if step["step"] == "rir"]
                entry["noise_file"] = noise[0].get("file", "") if noise else ""  # Gaussian: its seed is in parameters
                entry["noise_offset"] = noise[0].get("offset", "") if noise else ""
                entry["snr"] = noise[0]["snr"] if noise else ""
                entry["rir_file"] = rirs[0]["file"] if rirs else ""
                entry["seed"] = draws["seed"]
                entry["parameters"] = json.dumps(draws["steps"], sort_keys=True) if draws["steps"] else ""
            manifest.append(entry)
    with open(manifest_path, "w", newline="", encoding="utf-8") as fout:
        writer = csv.DictWriter(fout, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(manifest)
    with open(os.path.join(output_folder, "SHA256SUMS"), "w", encoding="utf-8") as fout:
        for relative in written + ["manifest.csv"]:
            fout.write(f"{_sha256(os.path.join(output_folder, relative))}  {relative}\n")
    logger.info("Rendered %d files of %s under %s to %s", len(written), recipe, protocol, output_folder)
    return manifest_path


def parse_options(arguments):
    """``--key=value`` arguments as a dict (values read as YAML: numbers, lists, null).

    Example
    -------
    >>> parse_options(["--save_folder=/a", "--test_condition_names=[clean, snr5]", "--test_corruption_seed=3"])
    {'save_folder': '/a', 'test_condition_names': ['clean', 'snr5'], 'test_corruption_seed': 3}
    """
    options = {}
    for argument in arguments:
        if not argument.startswith("--") or "=" not in argument:
            raise OptionError(f"Expected --option=value, got {argument!r}.")
        key, value = argument[2:].split("=", 1)
        options[key] = yaml.safe_load(value)
    return options


def main(argv=None):
    """The command line (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 3 or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    logging.basicConfig(level=logging.INFO)
    recipe, protocol, output_folder = argv[:3]
    try:
        manifest = render(recipe, protocol, output_folder, parse_options(argv[3:]))
    except (OptionError, FileExistsError) as error:
        print(f"render_protocol: {error}", file=sys.stderr)
        return 2
    print(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
