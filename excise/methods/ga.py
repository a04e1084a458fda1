"""`ga`, gradient ascent: maximize the NLL of the forget answers; no retain term."""

from __future__ import annotations

from dataclasses import dataclass

from excise.edit.unlearn import UnlearnConfig
from excise.methods.gradient import GradientMethod
from excise.scoring import answer_logprobs


@dataclass(frozen=True)
class GaConfig(UnlearnConfig):
    """`UnlearnConfig`'s defaults (retain_weight unused: gradient ascent has no retain term)."""


class Ga(GradientMethod):
    name = "ga"
    label = "GA"
    summary = "gradient ascent on the forget answers' NLL (no retain term)"
    Config = GaConfig
    retain_term = "none"
    requires = ()
    source = "Jang et al. 2023; open-unlearning GradAscent"

    def forget_loss(self, model, batch, idx, ref, extra, config):
        return answer_logprobs(model, batch).mean()                 # = -NLL: ascend the NLL


METHOD = Ga()
