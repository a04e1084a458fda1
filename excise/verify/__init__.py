"""excise.verify: attack an edited model and report what leaks.

    report = excise.verify.audit(model, forget, reference=record.original(), oracle=True)
    report.summary(); report.plot(); report.save("audit.json")

Probes, the logit-lens, relearning and membership-inference attacks (each
with its chance level; every attack is one file in `excise.verify.attacks`,
registered in `ATTACKS`; `register_attack(MyAttack())` adds one), specificity, and TOFU's forget quality and an organism
utility against the retrain oracle. `relearn_curve` measures relearned recall
after 0, 10, 30, 100 fine-tuning steps (on the other half of the forget facts
or on unrelated facts), next to the oracle's. (What deleting one fact does to
the others is an experiment above verify: `excise.experiments.entanglement`.)
"""

from excise.verify.attacks import ATTACKS, Attack, audited, defaults, register_attack
from excise.verify.audit import AuditConfig, audit
from excise.verify.calibration import guardrail, suppress_last_layer
from excise.verify.forget_quality import forget_quality, organism_utility, truth_ratios
from excise.verify.logit_lens import LensProbe, logit_lens
from excise.verify.membership import auc, membership_inference, membership_scores
from excise.verify.probes import Probe, probe
from excise.verify.relearn import RelearnConfig, RelearnCurve, relearn, relearn_curve
from excise.verify.report import AuditReport

# In reading order (the API reference follows it): the audit, what it returns, its config, each attack, the rest.
__all__ = ["audit", "AuditReport", "AuditConfig", "ATTACKS", "Attack", "register_attack", "audited", "defaults", "probe", "logit_lens", "relearn", "relearn_curve",
           "membership_inference", "membership_scores", "auc", "truth_ratios", "forget_quality", "organism_utility",
           "Probe", "LensProbe", "RelearnConfig", "RelearnCurve", "guardrail",
           "suppress_last_layer"]
