"""`head_projection`: Patil et al. 2023's extraction attack (top-k or bottom-k of the logit lens at some
layers, a candidate set of B); runs with the logit lens. `success("edited", "head_projection", b=4)` is theirs."""

from __future__ import annotations

from excise.verify.attacks.base import Attack
from excise.verify.attacks.probes import best_ranks
from excise.verify.logit_lens import head_projection_attack


class HeadProjection(Attack):
    name = "head_projection"
    succeeds = "the target is in Patil et al.'s candidate set of the top-k or bottom-k tokens at the lens layers " \
               "(rank < B; theirs is B = 4)"
    statistic = "-(rank in the head-projection candidate set)"
    audited = False                   # part of the logit lens, not counted in "any"
    with_attack = "logit_lens"
    two_sided = False                 # its candidate ranks are read at their B only

    def run(self, model, facts, config, relearn_n=None):
        rows = head_projection_attack(model, facts, layers=config.lens_layers)
        return {self.name: best_ranks(rows, facts, lambda r: r.rank),
                "head_projection_rows": [r.to_dict() for r in rows]}


ATTACK = HeadProjection()
