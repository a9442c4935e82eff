"""Writes ``sox_reference.npz``: the sox binary's ``reverb`` and ``sinc`` outputs on a fixed input.

The port in :mod:`robustdistiller.data.distortions` is checked against these stored outputs in
``tests/unit/data/test_distortions.py``, so a machine without sox still checks parity. Run it again
(with sox 14.4.2 on the PATH) only to refresh the reference:

    python tests/unit/data/sox_reference/make_sox_reference.py

Input: 3000 samples at 16 kHz, a unit impulse at sample 100 plus a decaying 440-2400 Hz chirp (the
same array is stored, so the test does not regenerate it).
"""

import json
import os
import subprocess
import tempfile

import numpy as np
import soundfile

SAMPLE_RATE = 16000
REVERB_SETTINGS = (
    # reverberance, hf_damping, room_scale, stereo_depth (Huang et al.: 50 50 <0-100>, sox's default depth)
    (50.0, 50.0, 0.0, 100.0),
    (50.0, 50.0, 63.0, 100.0),
    (50.0, 50.0, 100.0, 100.0),
    (85.0, 10.0, 40.0, 0.0),
)
BAND_REJECT_SETTINGS = ((1000.0, 2000.0), (300.0, 450.0), (5000.0, 7000.0))


def reference_input():
    time = np.arange(3000) / SAMPLE_RATE
    chirp = np.sin(2 * np.pi * (440 * time + 0.5 * (2400 - 440) / time[-1] * time**2))
    signal = 0.3 * chirp * np.exp(-time / 0.05)
    signal[100] += 0.5
    return signal.astype(np.float32)


def run_sox(signal, effect):
    with tempfile.TemporaryDirectory() as folder:
        input_path, output_path = os.path.join(folder, "in.wav"), os.path.join(folder, "out.wav")
        soundfile.write(input_path, signal, SAMPLE_RATE, subtype="FLOAT")
        command = ["sox", "-V1", input_path, "-e", "floating-point", "-b", "32", output_path, *effect]
        subprocess.run(command, check=True)
        output, rate = soundfile.read(output_path, dtype="float32")
    assert rate == SAMPLE_RATE and output.shape == signal.shape, (rate, output.shape)
    return output


def main():
    signal = reference_input()
    version = subprocess.run(["sox", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    arrays = {"input": signal}
    for index, (reverberance, damping, room_scale, depth) in enumerate(REVERB_SETTINGS):
        effect = ["reverb", str(reverberance), str(damping), str(room_scale), str(depth), "channels", "1"]
        arrays[f"reverb_{index}"] = run_sox(signal, effect)
    for index, (low, high) in enumerate(BAND_REJECT_SETTINGS):
        arrays[f"sinc_{index}"] = run_sox(signal, ["sinc", "-a", "120", f"{high}-{low}"])
    folder = os.path.dirname(os.path.abspath(__file__))
    np.savez_compressed(os.path.join(folder, "sox_reference.npz"), **arrays)
    settings = {
        "sox_version": version,
        "sample_rate": SAMPLE_RATE,
        "reverb": [list(setting) for setting in REVERB_SETTINGS],
        "sinc": [list(setting) for setting in BAND_REJECT_SETTINGS],
    }
    with open(os.path.join(folder, "sox_reference.json"), "w", encoding="utf-8") as json_file:
        json.dump(settings, json_file, indent=2)


if __name__ == "__main__":
    main()
