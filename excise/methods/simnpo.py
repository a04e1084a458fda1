"""`simnpo` (Fan et al. 2024, as open-unlearning computes it): reference-free, length-normalized NPO.

-(2 / beta) log sigmoid(beta * (NLL(y|x) / |y| - margin)) on the forget answers, NLL(y|x) the answer's
summed negative log-prob and |y| its token count, times `forget_weight`, plus the NLL of the retain answers.
open-unlearning's `delta` is `margin` here (inside beta, so the paper's gamma = beta * margin) and its
`gamma` (the forget term's weight) is `forget_weight`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from excise.edit.unlearn import UnlearnConfig
from excise.methods.gradient import GradientMethod
from excise.scoring import answer_logprobs


@dataclass(frozen=True)
class SimNpoConfig(UnlearnConfig):
    # open-unlearning's configs/trainer/SimNPO.yaml (from Unlearn-Simple's TOFU config)
    beta: float = 4.5
    margin: float = 0.0               # open-unlearning's delta
    forget_weight: float = 0.125      # open-unlearning's gamma


def simnpo_loss(logp: Float[Tensor, " b"], lengths: Int[Tensor, " b"], beta: float, margin: float) -> Tensor:
    """SimNPO's forget loss (open-unlearning's `SimNPO.compute_loss`): the batch mean of
    -(2 / beta) log sigmoid(beta * (-logp / length - margin)); `logp` the answers' summed log-probs."""
    nll = -logp / lengths
    return -(2 / beta) * torch.nn.functional.logsigmoid(beta * (nll - margin)).mean()


class SimNpo(GradientMethod):
    name = "simnpo"
    label = "SimNPO"
    summary = "SimNPO: reference-free, length-normalized NPO (open-unlearning's defaults)"
    Config = SimNpoConfig
    source = "Fan et al. 2024; open-unlearning SimNPO"

    def forget_loss(self, model, batch, idx, ref, extra, config):
        logp = answer_logprobs(model, batch)
        lengths = torch.tensor([len(e.answer) for e in batch], device=logp.device)
        return simnpo_loss(logp, lengths, config.beta, config.margin)


METHOD = SimNpo()
