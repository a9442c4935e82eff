"""The eSpeak NG synthesis worker: eSpeak NG through ctypes, run in a fresh process for every batch.

eSpeak NG keeps internal state from one synthesis to the next (its output depends on what it
synthesised before in the same process), so :func:`robustdistiller.testing.synthesis.synthesize_speech`
runs this module in a fresh Python subprocess, which synthesises its requests in a fixed order: the
same requests give the same samples. The ``espeakng-loader`` wheel ships the library and its voice data.
This module imports only what the worker needs, so each subprocess starts fast.

Command line: ``python -m robustdistiller.testing.espeak_worker REQUESTS_JSON OUTPUT_NPZ``.
"""

import argparse
import ctypes
import json

import espeakng_loader
import numpy as np

ESPEAK_SAMPLE_RATE = 22050


def synthesize_in_this_process(requests):
    """Synthesises each request with eSpeak NG, in order; returns int16 arrays at 22,050 Hz.

    Must run in a fresh process: eSpeak NG keeps state between syntheses.
    """
    library = ctypes.CDLL(espeakng_loader.get_library_path())
    synchronous_output = 2
    rate = library.espeak_Initialize(synchronous_output, 0, espeakng_loader.get_data_path().encode(), 0)
    if rate != ESPEAK_SAMPLE_RATE:
        raise RuntimeError(f"eSpeak NG failed to initialise (returned {rate}).")
    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
    chunks = []

    def collect(samples, num_samples, events):
        if num_samples > 0:
            chunks.append(np.ctypeslib.as_array(samples, shape=(num_samples,)).copy())
        return 0

    callback = callback_type(collect)
    library.espeak_SetSynthCallback(callback)
    library.espeak_Synth.argtypes = [
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    rate_parameter, pitch_parameter, range_parameter = 1, 3, 4
    waveforms = []
    for request in requests:
        chunks.clear()
        if library.espeak_SetVoiceByName(request["voice"].encode()) != 0:
            raise RuntimeError(f"eSpeak NG has no voice '{request['voice']}'.")
        library.espeak_SetParameter(rate_parameter, int(request["rate"]), 0)
        library.espeak_SetParameter(pitch_parameter, int(request["pitch"]), 0)
        library.espeak_SetParameter(range_parameter, int(request["range"]), 0)
        text = request["text"].encode()
        status = library.espeak_Synth(text, len(text) + 1, 0, 0, 0, 0, None, None)
        library.espeak_Synchronize()
        if status != 0 or not chunks:
            raise RuntimeError(f"eSpeak NG could not synthesise {request!r} (status {status}).")
        waveforms.append(np.concatenate(chunks))
    return waveforms


def main(argv=None):
    """Command line: ``python -m robustdistiller.testing.espeak_worker REQUESTS_JSON OUTPUT_NPZ``.

    JSON requests in, ``.npz`` waveforms out (``arr_0``, ``arr_1``... in the order of the requests).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("requests_json", help="JSON list of requests (text, voice, rate, pitch, range)")
    parser.add_argument("output_npz", help="Where the int16 waveforms at 22,050 Hz are saved")
    arguments = parser.parse_args(argv)
    with open(arguments.requests_json, encoding="utf-8") as requests_file:
        requests = json.load(requests_file)
    waveforms = synthesize_in_this_process(requests)
    np.savez(arguments.output_npz, *waveforms)


if __name__ == "__main__":
    main()
