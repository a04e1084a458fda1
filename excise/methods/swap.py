"""`swap`, subject-swap distillation (after Eldan & Russinovich's generic predictions, "Who's Harry Potter?").

On the forget prompts, match the original model's next-token distributions on the *same prompts with the
subject replaced by a stand-in the model never saw* (KL(teacher || current) at the answer positions), plus
the NLL of the retain answers. The target is what the model says about a stranger, which is what a model
never trained on the subject says about them: not suppression below the prior, as GA/NPO push, but the
prior itself. The loss adds the squared gap between the current and the teacher's log-prob of each true
answer token (KL alone barely weighs an answer the teacher finds unlikely). Needs stand-ins (never-seen
names; one per forget subject, reused cyclically). No early stop on recall: the aim is the chance level,
not zero, so it runs its `steps`.
"""

from __future__ import annotations

from dataclasses import dataclass

from excise.edit.unlearn import UnlearnConfig, answer_distributions, distill, swapped
from excise.methods.gradient import GradientMethod
from excise.scoring import answer_examples


@dataclass(frozen=True)
class SwapConfig(UnlearnConfig):
    # chosen on the organism's 5% split (benchmarks/RESULTS.md)
    steps: int = 200
    retain_weight: float = 3.0


class Swap(GradientMethod):
    name = "swap"
    label = "subject-swap distillation"
    summary = "subject-swap distillation: say about the subject what the model says about a stranger"
    Config = SwapConfig
    requires = ("retain", "stand_ins")
    early_stop = False
    source = "excise, after Eldan & Russinovich 2023"

    def prepare(self, model, forget, examples, config, stand_ins):
        teacher = answer_examples(model, swapped(forget, stand_ins or ()), config.families)
        assert len(teacher) == len(examples), "stand-in prompts must align with the forget prompts"
        rows = answer_distributions(model, teacher)
        return [rows[e] for e in teacher]          # per forget example: the teacher's rows

    def forget_loss(self, model, batch, idx, ref, extra, config):
        return distill(model, batch, [extra[i] for i in idx], match_answer=True)


METHOD = Swap()
