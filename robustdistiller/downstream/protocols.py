"""Test-protocol presets: the peers' published noisy test protocols as data, and the corruptor that runs them.

A preset is a YAML file of ``protocol_presets/`` (:data:`PRESET_NAMES`): ``robustdistiller`` (ours, the
default, run by :func:`robustdistiller.downstream.protocol.build_corruptor`), ``huang2022`` (Huang et al.,
SLT 2022: ``2dis``, ``dns``, ``fsd50k``) and ``srb`` (Speech Robust Bench's additive conditions at
30/20/10/0 dB and its two RIR families by severity bin). A recipe picks one with ``test_protocol``.

:class:`ProtocolCorruptor` applies one condition of a ``chain`` preset to one utterance with the call shape of
:class:`~robustdistiller.data.corruption.Corruptor` (``corruptor(clean, key, condition, snr)``), so
:class:`~robustdistiller.downstream.data.AudioPipeline` uses either. Every draw (noise file and offset, SNR,
RIR file, distortion parameters) comes from a ``torch.Generator`` seeded by ``(seed, key)``
(:func:`~robustdistiller.data.corruption.hash_seed`): every upstream hears the same audio.
:meth:`ProtocolCorruptor.draw` returns those draws as plain values (the manifest of
:mod:`robustdistiller.downstream.render_protocol`). What each preset reproduces: ``docs/test_protocols.md``.
"""

import csv
import logging
import os

import torch
import yaml

from robustdistiller.data import distortions
from robustdistiller.data.audio import load_audio
from robustdistiller.data.corruption import SILENCE_RMS, CorruptedUtterance, hash_seed
from robustdistiller.data.prepare import test_sources
from robustdistiller.data.prepare.noise import prepare_noise
from robustdistiller.runs.options import OptionError

logger = logging.getLogger(__name__)

PRESETS_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "protocol_presets")
PRESET_NAMES = ("robustdistiller", "huang2022", "srb")
DEFAULT_PROTOCOL = "robustdistiller"
GENERATED_SOURCES = ("gaussian",)
"""Sources that need no file (white Gaussian noise)."""
RECIPE_SOURCE_OPTIONS = (
    "test_wham_folder",
    "test_fsd50k_folder",
    "test_dns_folder",
    "test_ms_snsd_folder",
    "test_esc50_folder",
    "test_real_rir_srmr_csv",
)
"""Recipe options of the presets' sources besides ``test_musan_folder`` and ``test_rir_folder``."""


def load_preset(name):
    """The preset ``name`` as a dict (its YAML file in ``protocol_presets/``).

    Raises
    ------
    OptionError
        If ``name`` is not one of :data:`PRESET_NAMES` (the message names ``test_protocol``).

    Example
    -------
    >>> sorted(load_preset("huang2022")["conditions"])
    ['2dis', 'clean', 'dns', 'fsd50k']
    """
    if name not in PRESET_NAMES:
        raise OptionError(f"Option `test_protocol` is {name!r}; expected one of {list(PRESET_NAMES)}.")
    with open(os.path.join(PRESETS_FOLDER, f"{name}.yaml"), encoding="utf-8") as fin:
        return yaml.safe_load(fin)


def preset_test_conditions(preset):
    """The test conditions of a ``chain`` preset: ``{name: {"condition", "snr"?, "severity"?}}``.

    A condition with ``snrs`` gives one test condition per SNR (``<condition>_snr<snr>``), paired: they share
    the seed prefix (the condition), so they add the same noise segment scaled to each SNR. One with
    ``severities`` gives ``<condition>_bin<severity>``.

    Example
    -------
    >>> names = list(preset_test_conditions(load_preset("srb")))
    >>> names[:3], names[-1]
    (['clean', 'gnoise_snr30', 'gnoise_snr20'], 'real_rir_bin4')
    """
    conditions = {}
    for name, spec in preset["conditions"].items():
        if "snrs" in spec:
            for snr in spec["snrs"]:
                conditions[f"{name}_snr{snr}"] = {"condition": name, "snr": snr}
        elif "severities" in spec:
            for severity in spec["severities"]:
                conditions[f"{name}_bin{severity}"] = {"condition": f"{name}/{severity}"}
        else:
            conditions[name] = {"condition": name}
    return conditions


def prepare_protocol_sources(hparams, preset, skip_prep=None):
    """Lists the preset's sources whose recipe option is set; ``{source: csv path or None}``.

    Reads ``save_folder``, ``skip_prep`` and each source's ``option`` (e.g. ``test_wham_folder``). Run it
    with ``run_on_main``; with ``skip_prep`` it only returns the paths. Preparation never writes into the
    source folders (the lists go to ``save_folder``).
    """
    skip_prep = hparams.get("skip_prep", False) if skip_prep is None else skip_prep
    save_folder = hparams["save_folder"]
    lists = {}
    for name, spec in preset["sources"].items():
        folder = hparams.get(spec["option"])
        if not folder:
            lists[name] = None
            continue
        csv_name = f"test_{preset['name']}_{name}.csv"
        kind = spec["prepare"]
        if kind == "musan":
            lists[name] = prepare_noise(
                save_folder, musan_folder=folder, musan_subsets=spec["subsets"], csv_name=csv_name, skip_prep=skip_prep
            )
        elif kind == "rirs_noises_real":
            lists[name] = test_sources.prepare_real_rirs(
                save_folder, folder, srmr_csv=hparams.get(spec["srmr_option"]), csv_name=csv_name, skip_prep=skip_prep
            )
        else:
            preparer = {
                "wham_tt": test_sources.prepare_wham_noise,
                "fsd50k_eval": test_sources.prepare_fsd50k,
                "dns_noise": test_sources.prepare_dns_noise,
                "dns_rirs": test_sources.prepare_dns_rirs,
                "ms_snsd_noise_test": test_sources.prepare_ms_snsd,
                "esc50": test_sources.prepare_esc50,
                "rirs_noises_simulated": test_sources.prepare_simulated_rirs,
            }[kind]
            lists[name] = preparer(save_folder, folder, csv_name=csv_name, skip_prep=skip_prep)
    return lists


def _chain_sources(chain):
    for step in chain:
        if step["step"] == "one_of":
            yield from _chain_sources(step["choices"])
        yield from step.get("sources", ())


def select_preset_conditions(preset, conditions, source_lists):
    """Drops the conditions that need a source whose option is not set, or a severity bin with no RIR.

    Each dropped condition is logged with the option to set (or the empty bin).
    """
    kept = {}
    for name, spec in conditions.items():
        base, _, severity = spec["condition"].partition("/")
        chain = preset["conditions"][base]["chain"]
        missing = [
            source for source in _chain_sources(chain) if source not in GENERATED_SOURCES and not source_lists[source]
        ]
        if missing:
            options = sorted({preset["sources"][source]["option"] for source in missing})
            logger.warning("Test condition '%s' of protocol %s skipped: set %s", name, preset["name"], options)
            continue
        empty = [
            source
            for source in _chain_sources(chain)
            if severity and not any(row.get("severity") == severity for row in _read_rows(source_lists[source]))
        ]
        if empty:
            logger.warning(
                "Test condition '%s' of protocol %s skipped: no RIR of severity %s in %s",
                name,
                preset["name"],
                severity,
                [source_lists[source] for source in empty],
            )
            continue
        kept[name] = spec
    return kept


def _read_rows(csv_path):
    with open(csv_path, newline="", encoding="utf-8") as fin:
        return list(csv.DictReader(fin))


def _draw_value(value, generator):
    """A fixed number, or an integer drawn uniformly from ``{"integers": [low, high]}`` (both included)."""
    if isinstance(value, dict):
        low, high = value["integers"]
        return int(torch.randint(int(low), int(high) + 1, (1,), generator=generator))
    return value


class ProtocolCorruptor:
    """Applies a condition of a ``chain`` preset to one utterance, seeded by ``(seed, key)``.

    Arguments
    ---------
    preset : dict
        A preset (:func:`load_preset`) with ``implementation: chain``.
    source_lists : dict
        ``{source: CSV path or None}`` (:func:`prepare_protocol_sources`).
    seed : int
        Base seed (the recipe's ``test_corruption_seed``).
    sample_rate : int
        Sample rate of the audio (noise and RIR files are resampled to it).

    Example
    -------
    >>> corruptor = ProtocolCorruptor(load_preset("srb"), {}, seed=1)
    >>> clean = torch.sin(torch.arange(16000) * 0.05)
    >>> out = corruptor(clean, key="gnoise/utt1", condition="gnoise", snr=10)
    >>> out.condition, out.snr, round(10 * torch.log10(clean.pow(2).sum() / (out.noisy - clean).pow(2).sum()).item(), 2)
    ('gnoise', 10.0, 10.0)
    """

    def __init__(self, preset, source_lists, seed=2024, sample_rate=16000):
        if preset.get("implementation") != "chain":
            raise ValueError(f"Preset {preset.get('name')!r} is not a chain preset; use protocol.build_corruptor.")
        self.preset = preset
        self.seed = int(seed)
        self.sample_rate = int(sample_rate)
        self.epoch = 0
        self.rows = {name: _read_rows(path) for name, path in source_lists.items() if path}
        self._cache = {}

    def set_epoch(self, epoch):
        """Kept for the call shape of Corruptor; test draws do not depend on the epoch."""
        self.epoch = int(epoch)

    def item_seed(self, key):
        """The 63-bit seed of one utterance (:func:`~robustdistiller.data.corruption.hash_seed`)."""
        return hash_seed(self.seed, key)

    def _load(self, path):
        if path not in self._cache:
            self._cache[path] = load_audio(path, sample_rate=self.sample_rate)
        return self._cache[path]

    def _pick_file(self, source, generator, severity=None):
        rows = self.rows.get(source)
        if not rows:
            raise ValueError(f"Protocol {self.preset['name']}: source '{source}' has no list; set its option.")
        if severity is not None:
            rows = [row for row in rows if str(row.get("severity")) == str(severity)]
            if not rows:
                raise ValueError(
                    f"Protocol {self.preset['name']}: source '{source}' has no RIR of severity {severity}."
                )
        return rows[int(torch.randint(len(rows), (1,), generator=generator))]["wav"]

    def draw(self, key, condition, snr=None, num_samples=0):
        """The draws of one utterance: ``{"seed", "condition", "steps": [...]}`` (plain values, a manifest row).

        Arguments
        ---------
        key : str
            Utterance identity (with the condition prefix of :func:`~robustdistiller.downstream.data.paired_condition_key`).
        condition : str
            A condition of the preset (``name`` or ``name/severity``).
        snr : float, optional
            The SNR of a condition with ``snrs``.
        num_samples : int
            Length of the utterance (for the noise offset).
        """
        name, _, severity = condition.partition("/")
        if name not in self.preset["conditions"]:
            raise ValueError(f"Unknown condition {condition!r} of protocol {self.preset['name']}.")
        seed = self.item_seed(key)
        generator = torch.Generator().manual_seed(seed)
        steps = [
            self._draw_step(step, generator, snr, severity or None, num_samples)
            for step in self.preset["conditions"][name]["chain"]
        ]
        return {"seed": seed, "condition": condition, "steps": steps}

    def _draw_step(self, step, generator, snr, severity, num_samples):
        kind = step["step"]
        if kind == "one_of":
            choice = step["choices"][int(torch.randint(len(step["choices"]), (1,), generator=generator))]
            return self._draw_step(choice, generator, snr, severity, num_samples)
        if kind == "noise":
            source = step["sources"][int(torch.randint(len(step["sources"]), (1,), generator=generator))]
            drawn = {"step": "noise", "source": source, "short_noise": step.get("short_noise", "tile")}
            drawn["snr"] = float(snr if snr is not None else _draw_value(step["snr"], generator))
            if source in GENERATED_SOURCES:
                drawn["noise_seed"] = int(torch.randint(2**62, (1,), generator=generator))
            else:
                drawn["file"] = self._pick_file(source, generator)
                length = self._load(drawn["file"]).shape[0]
                drawn["offset"] = int(torch.randint(max(length - num_samples, 0) + 1, (1,), generator=generator))
            return drawn
        if kind == "rir":
            source = step["sources"][int(torch.randint(len(step["sources"]), (1,), generator=generator))]
            drawn = {"step": "rir", "source": source, "convention": step["convention"]}
            drawn["file"] = self._pick_file(source, generator, severity)
            if "rir_snr" in step:
                drawn["rir_snr"] = float(_draw_value(step["rir_snr"], generator))
            return drawn
        if kind == "sox_reverb":
            return {
                "step": kind,
                **{
                    name: float(_draw_value(step[name], generator))
                    for name in ("reverberance", "hf_damping", "room_scale")
                },
            }
        if kind == "pitch_shift":
            return {"step": kind, "cents": float(_draw_value(step["cents"], generator))}
        if kind == "band_reject":
            low, high = distortions.draw_huang_band(self.sample_rate, generator, step["band_scaler"])
            return {"step": kind, "low_hz": low, "high_hz": high}
        raise ValueError(f"Unknown step {kind!r} in protocol {self.preset['name']}.")

    def apply(self, clean, draws):
        """Applies :meth:`draw`'s draws to a ``[time]`` waveform; float32, same length."""
        waveform = clean.detach().to("cpu", torch.float32)
        num_samples = waveform.shape[0]
        for step in draws["steps"]:
            kind = step["step"]
            if kind == "noise":
                if step["source"] == "gaussian":
                    generator = torch.Generator().manual_seed(step["noise_seed"])
                    waveform = distortions.add_gaussian_noise(waveform, step["snr"], generator)
                    continue
                noise = self._load(step["file"])
                if noise.shape[0] >= num_samples:
                    segment = noise[step["offset"] : step["offset"] + num_samples]
                else:
                    segment = distortions.noise_segment(noise, num_samples, torch.Generator(), step["short_noise"])
                waveform = distortions.mix_at_snr(waveform, segment, step["snr"])
            elif kind == "rir":
                waveform = distortions.apply_rir(
                    waveform, self._load(step["file"]), self.sample_rate, step["convention"], step.get("rir_snr")
                )
            elif kind == "sox_reverb":
                parameters = {name: step[name] for name in ("reverberance", "hf_damping", "room_scale")}
                waveform = distortions.sox_reverb(waveform, self.sample_rate, **parameters)
            elif kind == "pitch_shift":
                waveform = distortions.pitch_shift(waveform, self.sample_rate, step["cents"])
            elif kind == "band_reject":
                waveform = distortions.band_reject(waveform, self.sample_rate, step["low_hz"], step["high_hz"])
        return waveform

    def __call__(self, clean, key, condition=None, snr=None):
        """Corrupts one utterance (the call shape of :class:`~robustdistiller.data.corruption.Corruptor`).

        A silent utterance (RMS below ``SILENCE_RMS``) is returned as it is, as Corruptor does.
        """
        if clean.dim() != 1:
            raise ValueError(f"ProtocolCorruptor expects a [time] waveform, got shape {tuple(clean.shape)}.")
        if condition is None:
            raise ValueError(
                f"Protocol {self.preset['name']} draws no condition: pass one of {list(self.preset['conditions'])}."
            )
        clean_wav = clean.detach().to("cpu", torch.float32)
        if clean_wav.pow(2).mean().sqrt() < SILENCE_RMS:
            return CorruptedUtterance(clean_wav, clean_wav, condition, float("nan"), None)
        draws = self.draw(key, condition, snr, clean_wav.shape[0])
        noisy = self.apply(clean_wav, draws).to(clean.device)
        noise_steps = [step for step in draws["steps"] if step["step"] == "noise"]
        drawn_snr = noise_steps[0]["snr"] if noise_steps else float("nan")
        source = noise_steps[0]["source"] if noise_steps else None
        return CorruptedUtterance(noisy, clean_wav.to(clean.device), condition, drawn_snr, source)


def build_protocol_corruptor(hparams, protocol):
    """The corruptor of a ``chain`` preset, for :func:`~robustdistiller.downstream.protocol.build_corruptors`.

    Reads the lists :func:`prepare_protocol_sources` wrote (a list not written counts as a source not set);
    the caller selects the conditions with :func:`preset_test_conditions` and :func:`select_preset_conditions`.

    Returns
    -------
    (ProtocolCorruptor, dict, dict)
        The corruptor, the preset and ``{source: CSV path or None}``.
    """
    preset = load_preset(protocol)
    source_lists = prepare_protocol_sources(hparams, preset, skip_prep=True)
    source_lists = {name: path if path and os.path.isfile(path) else None for name, path in source_lists.items()}
    corruptor = ProtocolCorruptor(
        preset,
        source_lists,
        seed=hparams.get("test_corruption_seed", 2024),
        sample_rate=hparams.get("sample_rate", 16000),
    )
    return corruptor, preset, source_lists


def read_manifest(manifest_path):
    """``(conditions, paths)``: ``{name: spec}`` in the manifest's order and ``{(name, utterance): wav path}``.

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "manifest.csv")
    >>> _ = open(path, "w").write("utterance,condition,wav,snr\\nu1,snr5,snr5/u1.wav,5\\n")
    >>> conditions, paths = read_manifest(path)
    >>> conditions, paths[("snr5", "u1")] == os.path.join(os.path.dirname(path), "snr5", "u1.wav")
    ({'snr5': {'condition': 'snr5', 'rendered': True}}, True)
    """
    if not os.path.isfile(manifest_path):
        raise OptionError(
            f"Option `test_audio_manifest`: '{manifest_path}' not found (a render_protocol manifest.csv)."
        )
    folder = os.path.dirname(os.path.abspath(manifest_path))
    conditions, paths = {}, {}
    with open(manifest_path, newline="", encoding="utf-8") as fin:
        for row in csv.DictReader(fin):
            conditions.setdefault(row["condition"], {"condition": row["condition"], "rendered": True})
            paths[(row["condition"], row["utterance"])] = os.path.join(folder, row["wav"])
    return conditions, paths
