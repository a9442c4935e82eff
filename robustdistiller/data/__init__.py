"""Audio in: reading audio and data folders, corpus preparation, per-utterance corruption, batching, the data pipeline."""
