"""`depth`: the Unlearning Depth Score (`excise.verify.depth`): the retrain oracle's and the audited model's
residual streams patched, block by block, into the unedited model on the forget prompts and answers."""

from __future__ import annotations

from excise.verify.attacks.base import Attack
from excise.verify.depth import unlearning_depth
from excise.verify.membership import answer_rows

SHALLOW = 0.5           # a fact counts as recovered when its UDS is below this (excise's cut; the paper reports the score)


class Depth(Attack):
    name = "depth"
    label = "depth (UDS)"
    succeeds = f"the fact's Unlearning Depth Score is below {SHALLOW}: the unedited model reads more than half of " \
               "what the retrain oracle lacks back out of the audited model's residual stream (Lee et al. 2026)"
    statistic = "1 - UDS"
    needs = ("oracle",)
    compares_models = True
    without = "needs the unedited model and the retrain oracle (pass reference= and oracle=)"
    two_sided = False                 # UDS is relative to the oracle (1) and the unedited model (0) by construction
    default = False

    def measure_models(self, model, facts, context, config, result, role, models):
        # the unedited model reads the states (its own give 0 exactly); the oracle is the knowledge-free source
        # (its own give 1 by construction: not computed); without either there is nothing to measure against
        full, oracle = models.get("reference"), models.get("oracle")
        if role == "oracle" or full is None or oracle is None:
            return
        rows, n_answer = answer_rows(full, facts)
        result.attacks.extra[f"{self.name}_rows"] = unlearning_depth(full, model, oracle, rows, n_answer).to_dict()

    def ranks(self, ranks):
        found = ranks.extra.get(f"{self.name}_rows") if ranks is not None else None
        return [u for u in found["uds"] if u is not None] if found else None

    def hit(self, value, b):
        return value < SHALLOW

    def per_fact(self, result, b):
        """Per audited fact (a fact without a knowledge-encoding layer: nothing to recover, False)."""
        found = result.attacks.extra.get(f"{self.name}_rows")
        return [u is not None and self.hit(u, b) for u in found["uds"]] if found else []

    def chance(self, result, b):
        return None

    def above_chance(self, result, b):
        return None

    def success_label(self, b):
        return f"depth (UDS < {SHALLOW})"


ATTACK = Depth()
