"""Inference without training code: the standalone SpeechBrain interface (copied into exports) and the ONNX Runtime encoder."""
