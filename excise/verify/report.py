"""AuditReport: what an audit measured, per model, as a table, JSON, Markdown and a figure.

Its first verdict is `leakage()`: per attack, is the edited model's
statistic on the forget facts distinguishable, two-sided, from the same
statistic on never-seen people's facts (leaks / over_suppressed /
indistinguishable / underpowered; `excise.verify.leakage`)? Reports written
before it was stored recompute it from their raw evidence where they can.

The report keeps raw evidence (every probe's rank and top candidates, the
logit-lens rank after every layer, relearned ranks, membership scores), so
attack success at another B can be recomputed with `success(..., b=)`
without re-running anything.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from excise.display import fmt
from excise.facts import json_text
from excise.verify.attacks import ATTACKS, audited
from excise.verify.leakage import AttackVerdict
from excise.verify.membership import ANSWER_SCORES, SCORES
from excise.verify.results import ModelAudit

ROLES = ("reference", "edited", "oracle")
# the rows a notebook shows before "all metrics"
_HEADLINE = ("recall: request", "recall: paraphrase", "recall: question", "attack success: any",
             "relearned recall (top-1)", "neighbour recall", "retain recall", "forget quality (KS p vs oracle)",
             "model utility / reference")


def _rate(values: list[bool]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass
class AuditReport:
    config: dict[str, Any]
    facts: list[dict[str, Any]]
    neighbours: list[dict[str, Any]]
    models: dict[str, ModelAudit] = field(repr=False)    # per role ("edited", "reference", "oracle")
    seconds: float = 0.0

    # -- verdicts ---------------------------------------------------------
    @property
    def top_b(self) -> int:
        return int(self.config["top_b"])

    def roles(self) -> list[str]:
        return [r for r in ROLES if r in self.models]

    def verdicts(self, role: str = "edited", attack: str = "any", b: int | None = None) -> list[bool]:
        """Per fact: did `attack` find the target (top-B) on `role`'s model? `any`: did one of the audited ones?"""
        b = b or self.top_b
        if attack == "any":
            per = [self.verdicts(role, a, b) for a in audited() if self._has(role, a)]
            return [any(v) for v in zip(*per, strict=True)] if per else []
        return ATTACKS.get(attack).per_fact(self.models[role], b)

    def _has(self, role: str, attack: str) -> bool:
        return ATTACKS.get(attack).ran(self.models[role])

    def leakage(self, role: str = "edited") -> dict[str, AttackVerdict]:
        """Per attack: the two-sided verdict of `role`'s forget facts against never-seen facts.

        Stored by the audit; a report loaded from older JSON has it recomputed
        from its raw evidence (`ModelAudit.from_dict`), so attacks whose holdout
        statistic was not kept are left out. Empty for a role not audited.
        """
        return dict(self.models[role].leakage) if role in self.models else {}

    def verdict_lines(self) -> list[str]:
        """One line per audited model (the edited one first): each attack's verdict, AUC, p and detectable effect."""
        lines = []
        for role in sorted(self.roles(), key=lambda r: r != "edited"):
            verdicts = self.leakage(role)
            if verdicts:
                lines.append(f"{role} vs never-seen facts (two-sided Mann-Whitney): "
                             + "; ".join(verdicts[a].line() for a in ATTACKS.names() if a in verdicts))
        return lines

    def success(self, role: str = "edited", attack: str = "any", b: int | None = None) -> float | None:
        """Share of facts on which the attack succeeds."""
        return _rate(self.verdicts(role, attack, b))

    def chance(self, role: str = "edited", attack: str = "probes", b: int | None = None) -> float | None:
        """The same attack's success on never-seen holdout facts (membership: its false-positive rate)."""
        return ATTACKS.get(attack).chance(self.models[role], b or self.top_b)

    def above_chance(self, role: str = "edited", attack: str = "probes", b: int | None = None) -> float | None:
        """One-sided p-value that the attack succeeds more often on the facts than by chance.

        Rank attacks: Fisher's exact test of forget-fact against holdout-fact
        success (the chance level is itself estimated); membership: a
        binomial test against its fixed false-positive rate (each attack's
        `above_chance`). Small (< 0.05) means the attack finds more than
        guessing would: the facts leak. Facts of one subject are not
        independent: read it as a screen.
        """
        return ATTACKS.get(attack).above_chance(self.models[role], b or self.top_b)

    def recall(self, role: str = "edited", family: str = "request") -> float | None:
        rows = [r for r in self.models[role].attacks.probe_rows or [] if r["family"] == family]
        return _rate([r["rank"] == 0 for r in rows])

    def relearn_recall(self, role: str = "edited") -> float | None:
        rows = self.models[role].attacks.relearn_rows or []
        return _rate([r["rank"] == 0 for r in rows])

    def forget_quality(self, role: str = "edited") -> float | None:
        """KS p-value between `role`'s truth ratios and the oracle's (needs an oracle and alternatives)."""
        from excise.verify.forget_quality import forget_quality

        oracle = self.models["oracle"].truth_ratios if "oracle" in self.models else None
        mine = self.models[role].truth_ratios
        return forget_quality(mine, oracle) if oracle and mine else None

    def depth(self, role: str = "edited") -> float | None:
        """The Unlearning Depth Score of `role` (`excise.verify.depth`): 1 erased as in the oracle, 0 intact;
        None where the `depth` attack did not run or had no reference and oracle, or no fact had a
        knowledge-encoding layer."""
        found = self.models[role].attacks.extra.get("depth_rows")
        return found["score"] if found else None

    def privleak(self, role: str = "edited") -> float | None:
        """MUSE's PrivLeak (percent) of `role` against the oracle, from the answer-token Min-K% membership AUC
        (`excise.verify.membership.privleak`); None without an oracle (open-unlearning then assumes an oracle
        AUC of 0.5; excise reports it missing) or a membership run, and for the oracle itself (0 by definition)."""
        from excise.verify.membership import privleak

        if role == "oracle" or "oracle" not in self.models:
            return None
        mine, oracle = self.models[role].membership, self.models["oracle"].membership
        if mine is None or oracle is None or "answer_min_k" not in mine.auc or "answer_min_k" not in oracle.auc:
            return None
        return privleak(mine.auc["answer_min_k"], oracle.auc["answer_min_k"])

    def kept(self, what: str = "neighbours") -> float | None:
        """Share of the facts the reference recalls that the edited model still recalls.

        `what`: "neighbours" (every neighbour of the facts), "same_subject" (the neighbours that
        are other facts of the facts' own subjects: what a per-subject edit most often takes
        along), "other_subjects" (the neighbours of other subjects) or "retain". None without a
        reference, or when no such fact is recalled by it.
        """
        from excise.verify.specificity import kept

        if "reference" not in self.models:
            return None
        if what in ("same_subject", "other_subjects"):
            mask = self._same_subject_neighbours(what == "same_subject")
            ref, now = (self.models[r].neighbours for r in ("reference", "edited"))
            ref, now = [x for x, m in zip(ref, mask) if m], [x for x, m in zip(now, mask) if m]
            return kept(ref, now)
        if what not in ("neighbours", "retain"):
            raise ValueError(f"what must be neighbours, same_subject, other_subjects or retain, got {what!r}")
        return kept(getattr(self.models["reference"], what), getattr(self.models["edited"], what))

    def _same_subject_neighbours(self, same: bool) -> list[bool]:
        subjects = {f["subject"] for f in self.facts}
        return [(n["subject"] in subjects) == same for n in self.neighbours]

    def utility(self, role: str = "edited", relative: bool = True) -> float | None:
        u = (self.models[role].utility or {}).get("utility")
        if u is None or not relative:
            return u
        ref = (self.models["reference"].utility or {}).get("utility") if "reference" in self.models else None
        return u / ref if ref else None

    # -- the table --------------------------------------------------------
    def rows(self) -> list[tuple[str, dict[str, Any]]]:
        """(metric, {role: value}) for every metric this report has."""
        roles, b = self.roles(), self.top_b
        out: list[tuple[str, dict[str, Any]]] = []

        def add(name: str, fn) -> None:
            values = {r: fn(r) for r in roles}
            if any(v is not None for v in values.values()):
                out.append((name, values))

        for fam in ("request", "paraphrase", "question", "completion", "held_out"):
            add(f"recall: {fam}", lambda r, fam=fam: self.recall(r, fam))
        for a in audited():
            label = ATTACKS.get(a).success_label(b)
            add(f"attack success: {label}", lambda r, a=a: self.success(r, a) if self._has(r, a) else None)
            add(f"chance: {a}", lambda r, a=a: self.chance(r, a))
            add(f"p(above chance): {a}", lambda r, a=a: self.above_chance(r, a))
        add("attack success: any", lambda r: self.success(r, "any"))
        add("relearned recall (top-1)", self.relearn_recall)
        for a in ATTACKS.names():
            add(f"leakage: {a}", lambda r, a=a: self.leakage(r)[a].verdict if a in self.leakage(r) else None)
            add(f"leakage AUC: {a}", lambda r, a=a: self.leakage(r)[a].auc if a in self.leakage(r) else None)
        for score in SCORES + ANSWER_SCORES:
            add(f"MIA AUC: {score}", lambda r, s=score: self.models[r].membership.auc.get(s)
                if self.models[r].membership is not None else None)
        add("neighbour recall", lambda r: _rate(self.models[r].neighbours))
        for label, same in (("same subject", True), ("other subjects", False)):
            mask = self._same_subject_neighbours(same)
            add(f"neighbour recall: {label}",
                lambda r, mask=mask: _rate([x for x, m in zip(self.models[r].neighbours, mask) if m]))
        add("retain recall", lambda r: _rate(self.models[r].retain))
        add("general loss (nats/token)", lambda r: self.models[r].general_loss)
        add("truth ratio (median)",
            lambda r: statistics.median(self.models[r].truth_ratios) if self.models[r].truth_ratios else None)
        add("forget quality (KS p vs oracle)", self.forget_quality)
        add("privleak (% vs oracle, answer Min-K%)", self.privleak)
        add("unlearning depth (UDS)", self.depth)
        add("model utility", lambda r: self.utility(r, relative=False))
        add("model utility / reference", self.utility)
        add("audit seconds", lambda r: self.models[r].seconds)
        return out

    def summary(self) -> str:
        """One table: a row per metric, a column per model audited."""
        roles = self.roles()
        lines = self.verdict_lines() + [f"{'metric':<36}" + "".join(f"{r:>12}" for r in roles)]
        for name, values in self.rows():
            lines.append(f"{name:<36}" + "".join(f" {fmt(values[r]):>11}" for r in roles))
        lines.append(f"{len(self.facts)} facts, top-B = {self.top_b}, {self.config['n_holdout']} holdout facts")
        lines += self.not_computed()
        return "\n".join(lines)

    def not_computed(self) -> list[str]:
        """One line per verdict the audit could not compute, with the missing piece and how to supply it."""
        return [f"not computed: {what} ({why})" for what, why in self.config.get("not_computed", {}).items()]

    def to_markdown(self) -> str:
        roles = self.roles()
        verdicts = [f"- {line}" for line in self.verdict_lines()]
        lines = verdicts + ([""] if verdicts else []) + \
            ["| metric | " + " | ".join(roles) + " |", "|---" * (len(roles) + 1) + "|"]
        for name, values in self.rows():
            lines.append(f"| {name} | " + " | ".join(fmt(values[r]) for r in roles) + " |")
        missing = self.not_computed()
        return "\n".join(lines + ([""] + [f"- {m}" for m in missing] if missing else []))

    def _repr_html_(self) -> str:
        """The notebook view: the verdict first, then the metric table (a column per model)."""
        from excise import display as d

        role = "edited" if "edited" in self.models else self.roles()[0]
        verdicts = self.leakage(role)
        if verdicts:
            by: dict[str, list[str]] = {}
            for a in ATTACKS.names():
                if a in verdicts:
                    by.setdefault(verdicts[a].verdict, []).append(a)
            head = [d.heading(f"verdict ({role} vs never-seen facts): "
                              + "; ".join(f"{v} on {', '.join(attacks)}" for v, attacks in by.items()))]
            others = [r for r in self.roles() if r != role and self.leakage(r)]
            rows = [[v.attack, v.verdict, v.auc, v.p_value, v.detectable_effect, f"{v.n_facts} / {v.n_holdout}",
                     *(self.leakage(r)[a].verdict if a in self.leakage(r) else None for r in others)]
                    for a in ATTACKS.names() if (v := verdicts.get(a)) is not None]
            head.append(d.table(["attack", "verdict", "AUC", "p (two-sided)", "detectable |AUC-0.5|",
                                 "facts / never-seen", *(f"{r}: verdict" for r in others)], rows,
                                caption="two-sided Mann-Whitney against never-seen facts, per attack"))
        else:
            head = [d.heading("verdict: none (no never-seen facts to compare against; pass a context)")]
        roles = self.roles()
        rows = self.rows()
        headline = [(n, v) for n, v in rows if n in _HEADLINE]
        body = (d.table(["metric", *roles], [[n, *(v[r] for r in roles)] for n, v in headline], max_rows=1000)
                + d.folded(f"all {len(rows)} metrics", d.table(
                    ["metric", *roles], [[n, *(v[r] for r in roles)] for n, v in rows], max_rows=1000)))
        foot = [f"{len(self.facts)} facts, top-B = {self.top_b}, {self.config['n_holdout']} holdout facts, "
                f"audit {self.seconds:.1f} s", *self.not_computed()]
        return "".join(head) + body + "".join(f"<p>{d.escape(x)}</p>" for x in foot)

    def __repr__(self) -> str:
        parts = [f"{len(self.facts)} facts", f"top-B={self.top_b}"]
        if "edited" in self.models:
            parts.append(f"edited: request recall={fmt(self.recall('edited'))}, "
                         f"attack success={fmt(self.success('edited'))}")
        return f"AuditReport({', '.join(parts)})"

    # -- persistence ------------------------------------------------------
    # one naming across Localization, EditRecord, AuditReport, Entanglement, FactSet and RelearnCurve:
    # save(path) / load(path) for files, to_dict() / from_dict() in memory, to_json() / from_json() for text
    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "facts": self.facts, "neighbours": self.neighbours,
                "models": {r: m.to_dict() for r, m in self.models.items()}, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AuditReport:
        return cls(d["config"], d["facts"], d["neighbours"],
                   {r: ModelAudit.from_dict(m) for r, m in d["models"].items()}, d["seconds"])

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> AuditReport:
        """A report from the JSON text `to_json` wrote (a file: `AuditReport.load(path)`)."""
        return cls.from_dict(json.loads(json_text(text, "AuditReport")))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> AuditReport:
        return cls.from_json(Path(path).read_text())

    def plot(self):
        from excise.verify.plots import plot_report

        return plot_report(self)
