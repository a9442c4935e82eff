"""Test data without downloads: synthetic speech and signals, the mini corpus, and the downstream fixtures.

- :mod:`.synthesis`: eSpeak NG speakers, sentences and speech at 16 kHz (each batch synthesised in a
  fresh subprocess, :mod:`.espeak_worker`, so the same requests give the same samples);
- :mod:`.signals`: colored noises, hums, babble, chords, room impulse responses, UrbanSound8K-like clips;
- :mod:`.writing`: writing the generated audio and text files;
- :mod:`.mini_corpus`: LibriSpeech, MUSAN, RIRS_NOISES and UrbanSound8K in miniature, for the distillation
  recipe, the demo and the tests (``python -m robustdistiller.testing.mini_corpus OUTPUT_FOLDER``);
- :mod:`.fixtures`: miniature copies of the downstream corpora, one module per corpus.
"""
