"""Distillation training: the Brain, the losses, held-out evaluation and enhancement quality."""
