"""Weights rounded to fewer bits: what a deployed model may run as, and what can bring unlearned knowledge back.

Zhang et al. (ICLR 2025, "Catastrophic failure of LLM unlearning via quantization") found that 4-bit weights
recover much of what unlearning had removed from a model's answers. Their code (zzwjames/FailureLLMUnlearning,
utils.py `load_model`) loads the model through bitsandbytes (`load_in_8bit` / `load_in_4bit`, a CUDA library).
excise rounds on any device, without that dependency: every linear map of every block (attention and MLP, not
the embeddings, the unembedding, norms or biases, which bitsandbytes leaves in full precision too) is rounded to
nearest per output channel, symmetric, with the channel's largest magnitude as the scale (`round_to_nearest`).
bitsandbytes' own formats (LLM.int8's row-wise absmax with outlier columns kept in 16 bits; 4-bit FP4 in blocks
of 64) are not reproduced: this is the round-to-nearest baseline of the quantization literature.
"""

from __future__ import annotations

from typing import Any

import torch

from excise.weights import LINEARS, copy_model, has_linear, linear


def round_to_nearest(W: torch.Tensor, bits: int) -> torch.Tensor:
    """W [d_in, d_out] rounded per output channel (column) to `bits`-bit signed integers times the column's
    scale max|W[:, j]| / (2^(bits-1) - 1); computed in float32, returned in W's dtype."""
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be in 2..16, got {bits}")
    levels = 2 ** (bits - 1) - 1
    w = W.detach().float()
    scale = w.abs().amax(dim=0, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny) / levels
    return ((w / scale).round().clamp(-levels, levels) * scale).to(W.dtype)


@torch.no_grad()
def quantized(model: Any, bits: int) -> Any:
    """A copy of `model` whose blocks' linear maps are rounded to `bits` bits (`round_to_nearest`); the model
    given is not changed. Cost: one copy of the model, one pass over its weights."""
    copy = copy_model(model)
    names = [n for n in LINEARS if has_linear(copy, n)]
    for layer in range(copy.cfg.n_layers):
        for name in names:
            view = linear(copy, layer, name)
            view.W.copy_(round_to_nearest(view.W, bits))
    return copy
