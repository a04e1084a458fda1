"""`graddiff`: gradient ascent on the forget answers plus the NLL of the retain answers."""

from __future__ import annotations

from dataclasses import dataclass

from excise.edit.unlearn import UnlearnConfig
from excise.methods.gradient import GradientMethod
from excise.scoring import answer_logprobs


@dataclass(frozen=True)
class GradDiffConfig(UnlearnConfig):
    """`UnlearnConfig`'s defaults: retain weight 1 (open-unlearning's GradDiff alpha 1)."""


class GradDiff(GradientMethod):
    name = "graddiff"
    label = "GradDiff"
    summary = "gradient difference: ascend the forget NLL, descend the retain NLL"
    Config = GradDiffConfig
    source = "Liu et al. 2022; open-unlearning GradDiff"

    def forget_loss(self, model, batch, idx, ref, extra, config):
        return answer_logprobs(model, batch).mean()


METHOD = GradDiff()
