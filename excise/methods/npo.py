"""`npo`, negative preference optimization (Zhang et al. 2024): (2 / beta) log(1 + (p / p_ref)^beta) on the
forget answers (p their sequence probability, p_ref the original model's), plus the NLL of the retain answers."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from excise.edit.unlearn import UnlearnConfig
from excise.methods.gradient import GradientMethod
from excise.scoring import answer_logprobs


@dataclass(frozen=True)
class NpoConfig(UnlearnConfig):
    beta: float = 0.1                 # the NPO paper's temperature


class Npo(GradientMethod):
    name = "npo"
    label = "NPO"
    summary = "negative preference optimization on the forget answers, NLL on the retain answers"
    Config = NpoConfig
    source = "Zhang et al. 2024; open-unlearning NPO (GradDiff with the NPO forget term)"

    def forget_loss(self, model, batch, idx, ref, extra, config):
        logp = answer_logprobs(model, batch)
        ratio = config.beta * (logp - ref.to(logp.device))
        return (2 / config.beta) * torch.nn.functional.softplus(ratio).mean()


METHOD = Npo()
