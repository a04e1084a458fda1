"""The audit's attacks, one file each, in one registry (see `base`).

    excise.verify.ATTACKS.names()       # probes logit_lens head_projection relearn membership truth_ratio
                                        # quantization exact_memorization extraction_strength extraction_strength_full
                                        # gradnorm reference depth
    excise.verify.register_attack(MyAttack())
"""

from excise.verify.attacks import (
    depth,
    head_projection,
    logit_lens,
    membership,
    memorization,
    probes,
    quantization,
    relearn,
    truth_ratio,
)
from excise.verify.attacks.base import (
    ATTACKS,
    Attack,
    audited,
    defaults,
    leakage,
    ordered,
    queries,
    register_attack,
    to_run,
    two_sided,
)

# The built-in attacks, registered in this order (the order of the report's rows and the benches' columns).
for _attack in (probes.ATTACK, logit_lens.ATTACK, head_projection.ATTACK, relearn.ATTACK, membership.ATTACK,
                truth_ratio.ATTACK, quantization.ATTACK, memorization.EXACT_MEMORIZATION,
                memorization.EXTRACTION_STRENGTH, memorization.EXTRACTION_STRENGTH_FULL, membership.GRADNORM,
                membership.REFERENCE, depth.ATTACK):
    register_attack(_attack)

__all__ = ["ATTACKS", "Attack", "audited", "defaults", "leakage", "ordered", "queries", "register_attack", "to_run", "two_sided"]
