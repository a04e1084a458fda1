"""`ablate`: bake a zero (or mean) ablation of the located components into the weights (`excise.edit.ablate`)."""

from __future__ import annotations

from dataclasses import dataclass

from excise.edit.ablation import ablate
from excise.methods.base import Method


@dataclass(frozen=True)
class AblateConfig:
    mode: str = "zero"                # "zero", or "mean" (the mean activation over the context's sample)
    seed: int = 0                     # unused (ablation is deterministic); every config takes one
    progress: bool = True


class Ablate(Method):
    name = "ablate"
    label = "ablation"
    summary = "zero-ablate the located neurons (or heads), baked into the weights"
    Config = AblateConfig
    mask = "required"
    reads = ("sample",)

    def run(self, model, facts, context, config, mask):
        sample = context.sample if config.mode == "mean" else None
        if config.mode == "mean" and not sample:
            raise ValueError("ablate with mode='mean' needs a text sample (context.sample) to average over")
        return ablate(model, mask, mode=config.mode, sample=sample)


METHOD = Ablate()
