"""Inference without training code: the standalone SpeechBrain interface and the padding-safe transformers class
and SpeechBrain lobe (both copied into exports), and the ONNX Runtime encoder."""
