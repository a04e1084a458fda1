"""`dpo`: prefer `refusal` (or a given answer per fact) over the true one, -log sigmoid(beta * margin), plus
the NLL of the retain answers (Rafailov et al. 2023, as TOFU's IdkDPO uses it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from excise.edit.unlearn import UnlearnConfig
from excise.methods.gradient import GradientMethod
from excise.scoring import answer_examples, answer_logprobs


@dataclass(frozen=True)
class DpoConfig(UnlearnConfig):
    beta: float = 0.1                 # DPO temperature (NPO paper's beta; open-unlearning DPO 0.1)
    refusal: str = "I don't know"     # the preferred answer (TOFU's idk answers, one fixed)


class Dpo(GradientMethod):
    name = "dpo"
    label = "DPO"
    summary = "direct preference optimization toward a refusal over the true answer"
    Config = DpoConfig
    source = "Rafailov et al. 2023; TOFU/open-unlearning IdkDPO"

    def prepare(self, model, forget, examples, config, stand_ins):
        preferred = answer_examples(model, forget, config.families, {f.key: config.refusal for f in forget})
        ref = torch.cat([answer_logprobs(model, preferred[i:i + 64]) for i in range(0, len(preferred), 64)])
        return preferred, ref

    def forget_loss(self, model, batch, idx, ref, extra, config):
        preferred_ex, preferred_ref = extra
        logp = answer_logprobs(model, batch)
        preferred = answer_logprobs(model, [preferred_ex[i] for i in idx])
        margin = (preferred - preferred_ref[idx].to(logp.device)) - (logp - ref.to(logp.device))
        return -torch.nn.functional.logsigmoid(config.beta * margin).mean()


METHOD = Dpo()
