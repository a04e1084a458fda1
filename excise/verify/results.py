"""What the audit measured on one model, as typed records (`AuditReport.models[role]` is a ModelAudit).

Ranks are 0-based (0: the target's first token is the top-1 answer). Every per-fact list follows the
order of the audited facts (`AuditReport.facts`); the `chance` lists follow the never-seen holdout
facts' order (relearning: a seeded sample of as many holdout facts as there are audited facts).
A field is None where the attack or metric was not run (see `AuditConfig.attacks` and the report's
"not computed" lines). The JSON form (`to_dict` / `from_dict`) is the one `AuditReport.save` writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from excise.verify.leakage import AttackVerdict
from excise.verify.membership import MembershipResult


@dataclass
class AttackRanks:
    """Per fact, the best rank each rank-based attack reached, and the evidence behind it."""

    probes: list[int] | None = None                  # best rank over every prompt family and template
    probe_rows: list[dict[str, Any]] | None = None   # one `Probe.to_dict()` per (fact, family, template)
    logit_lens: list[int] | None = None              # best rank over the layers (request prompt)
    lens_rows: list[dict[str, Any]] | None = None    # one `LensProbe.to_dict()` per (fact, template)
    lens_layers: list[list[int]] | None = None       # [fact][layer]: rank read after each layer (best template)
    head_projection: list[int] | None = None         # Patil et al.'s extraction attack: rank in the candidate set
    head_projection_rows: list[dict[str, Any]] | None = None
    relearn: list[int] | None = None                 # rank after fine-tuning on the other half (two folds)
    relearn_rows: list[dict[str, Any]] | None = None
    truth_ratios: list[float] | None = None          # holdout only: TOFU's truth ratio of each never-seen fact
    extra: dict[str, Any] = field(default_factory=dict)   # a registered plugin attack's ranks and evidence, by key

    @classmethod
    def of(cls, evidence: dict[str, Any]) -> AttackRanks:
        """From what the attacks' `run` returned: the built-in fields, the rest kept in `extra`."""
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in evidence.items() if k in known},
                   extra={k: v for k, v in evidence.items() if k not in known})

    def ranks(self, attack: str) -> list[int] | list[float] | None:
        """The per-fact ranks of the rank attack `attack` (a score attack's scores); None if it was not run."""
        from excise.verify.attacks import ATTACKS

        ATTACKS.check(attack)
        return getattr(self, attack) if attack in self.__dataclass_fields__ else self.extra.get(attack)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra" and getattr(self, f.name) is not None}
        return out | ({"extra": self.extra} if self.extra else {})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttackRanks:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown attack result field(s) {sorted(unknown)}; known: "
                             f"{[f.name for f in fields(cls)]}")
        return cls(**d)


@dataclass
class ModelAudit:
    """Everything the audit measured on one model (the edited one, its reference or the retrain oracle)."""

    attacks: AttackRanks                             # on the audited facts
    neighbours: list[bool]                           # per neighbour fact (`AuditReport.neighbours`): recalled top-1
    retain: list[bool]                               # per retain fact of the context: recalled top-1
    seconds: float
    chance: AttackRanks | None = None                # the same attacks on never-seen facts (None: no holdout)
    membership: MembershipResult | None = None       # forget vs never-seen facts' texts and answers
    general_loss: float | None = None                # nats per token on the context's general text
    truth_ratios: list[float] | None = None          # per audited fact (TOFU's R; needs wrong alternatives)
    utility: dict[str, float] | None = None          # the organism utility's parts and their harmonic mean
    leakage: dict[str, AttackVerdict] = field(default_factory=dict)   # per attack: the two-sided verdict

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"attacks": self.attacks.to_dict()}
        if self.chance is not None:
            out["chance"] = self.chance.to_dict()
        if self.membership is not None:
            out["membership"] = self.membership.to_dict()
        out |= {"neighbours": self.neighbours, "retain": self.retain, "general_loss": self.general_loss}
        if self.truth_ratios is not None:
            out["truth_ratios"] = self.truth_ratios
        if self.utility is not None:
            out["utility"] = self.utility
        return out | {"leakage": {a: v.to_dict() for a, v in self.leakage.items()}, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelAudit:
        """From `to_dict`'s form; a report written before the verdicts were stored gets them recomputed."""
        from excise.verify.attacks import leakage

        m = d.get("membership")
        audit = cls(attacks=AttackRanks.from_dict(d.get("attacks", {})), neighbours=list(d.get("neighbours", [])),
                    retain=list(d.get("retain", [])), seconds=float(d.get("seconds", 0.0)),
                    chance=AttackRanks.from_dict(d["chance"]) if d.get("chance") is not None else None,
                    membership=MembershipResult(**m) if m is not None else None,
                    general_loss=d.get("general_loss"), truth_ratios=d.get("truth_ratios"),
                    utility=d.get("utility"))
        audit.leakage = {a: AttackVerdict.from_dict(v) for a, v in d["leakage"].items()} if "leakage" in d \
            else leakage(audit)
        return audit
