"""The audit's attacks, one file each, in one registry (see `base`).

    excise.verify.ATTACKS.names()       # probes logit_lens head_projection relearn membership truth_ratio
    excise.verify.register_attack(MyAttack())
"""

from excise.verify.attacks import head_projection, logit_lens, membership, probes, relearn, truth_ratio
from excise.verify.attacks.base import (
    ATTACKS,
    Attack,
    audited,
    leakage,
    ordered,
    queries,
    register_attack,
    to_run,
    two_sided,
)

# The built-in attacks, registered in this order (the order of the report's rows and the benches' columns).
for _module in (probes, logit_lens, head_projection, relearn, membership, truth_ratio):
    register_attack(_module.ATTACK)

__all__ = ["ATTACKS", "Attack", "audited", "leakage", "ordered", "queries", "register_attack", "to_run", "two_sided"]
