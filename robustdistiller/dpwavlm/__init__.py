"""DPWavLM: DPHuBERT's prunable WavLM (hard-concrete gates, expected parameter count, ``prune()``).

The same module is DPHuBERT's prunable HuBERT when built from a HuBERT config or a HuBERT teacher folder.

* :mod:`~robustdistiller.dpwavlm.hard_concrete`: :class:`HardConcrete` gates;
* :mod:`~robustdistiller.dpwavlm.components`: gated CNN, projection, pos-conv, WavLM attention, FFN;
* :mod:`~robustdistiller.dpwavlm.model`: :class:`DPWavLM` (``extract_features``, ``expected_num_params``,
  ``prune``) and DPHuBERT configs;
* :mod:`~robustdistiller.dpwavlm.checkpoint`: DPHuBERT ``.pth`` files, HF WavLM import and padded export;
* :mod:`~robustdistiller.dpwavlm.objective`: layer-to-layer distillation through identity-initialised
  projections, the Lagrangian sparsity term and its target ramp;
* :mod:`~robustdistiller.dpwavlm.schedule`: AdamW groups (model, gates, multipliers), the shared
  warm-up / linear-decay factor, clipping over all groups.
* :mod:`~robustdistiller.dpwavlm.brain` / :mod:`~robustdistiller.dpwavlm.stages`: the Brain and the two-stage
  driver (stage 1 distill + prune, materialisation, stage 2; ``hparams/dpwavlm.yaml``,
  ``hparams/robust_dpwavlm.yaml``, run by ``train.py``);
* :mod:`~robustdistiller.dpwavlm.encoder`: :class:`DPWavLMEncoder`, a trained DPWavLM behind the students'
  interface (what ``load_student`` and ``FrozenUpstream`` give for a DPHuBERT ``.pth``);
* :mod:`~robustdistiller.dpwavlm.export`: ``dpwavlm.pth`` + padded ``transformers.WavLMModel`` copy + model card.

Facts: ``docs/reference/dphubert.md``.
"""

from robustdistiller.dpwavlm.checkpoint import (
    export_hf_wavlm_padded,
    from_hf_model,
    load_dphubert_checkpoint,
    save_dphubert_checkpoint,
)
from robustdistiller.dpwavlm.hard_concrete import HardConcrete
from robustdistiller.dpwavlm.model import (
    DPHUBERT_WAVLM_CONFIG_KEYS,
    DPHUBERT_HUBERT_CONFIG_KEYS,
    DPWavLM,
    hubert_base_config,
    tiny_config,
    tiny_hubert_config,
    wavlm_base_plus_config,
)
from robustdistiller.dpwavlm.objective import LayerProjections, SparsityLagrangian, layer_to_layer_loss
from robustdistiller.dpwavlm.schedule import LinearDecaySchedule, build_optimizer, clip_grad_norm_all_groups

__all__ = [
    "DPHUBERT_HUBERT_CONFIG_KEYS",
    "DPHUBERT_WAVLM_CONFIG_KEYS",
    "DPWavLM",
    "HardConcrete",
    "LayerProjections",
    "LinearDecaySchedule",
    "SparsityLagrangian",
    "build_optimizer",
    "clip_grad_norm_all_groups",
    "layer_to_layer_loss",
    "export_hf_wavlm_padded",
    "from_hf_model",
    "load_dphubert_checkpoint",
    "save_dphubert_checkpoint",
    "hubert_base_config",
    "tiny_config",
    "tiny_hubert_config",
    "wavlm_base_plus_config",
]
