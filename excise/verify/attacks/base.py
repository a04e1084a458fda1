"""What an audit attack is, and the one registry every attack name is looked up in.

An attack has a name, what it means for it to succeed on a fact (`succeeds`), the per-fact statistic
its two-sided verdict compares against never-seen facts (`statistic`, higher = knows more) and which
direction leaks (`leaks`), what it needs from the context (`needs`), and how it runs. A rank attack
(`run` returns per-fact ranks) gets success at top-B, its chance level, its p above chance and its
verdict from this base class; an attack whose evidence is not a rank overrides them. The audit, the
report, its plot and the benches loop over the registry; `excise.verify.register_attack(MyAttack())`
adds one from a notebook.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from excise.registry import Registry
from excise.verify.leakage import ALPHA, POWER, AttackVerdict, compare

if TYPE_CHECKING:
    from excise.context import KnowledgeContext
    from excise.facts import Fact
    from excise.verify.audit import AuditConfig
    from excise.verify.results import AttackRanks, ModelAudit


class Attack:
    """An audit attack. Subclass it, set the class attributes, implement `run` (or `measure`), register it."""

    name: ClassVar[str]
    label: ClassVar[str] = ""                # its name in prose (default: the name, underscores as spaces)
    succeeds: ClassVar[str]                  # "the target is in the top-B after ...": README, docs
    statistic: ClassVar[str]                 # the per-fact statistic of the verdict (higher = knows more)
    leaks: ClassVar[str] = "forget facts rank higher than never-seen ones"
    needs: ClassVar[tuple[str, ...]] = ()    # context fields it needs besides the facts (e.g. "holdout")
    # audited: one of AuditConfig.attacks (selected by name, counted in the "any" success); False: it rides
    # along with the attack named in `with_attack`, or is read from what the audit measures anyway
    audited: ClassVar[bool] = True
    with_attack: ClassVar[str | None] = None
    # default: run when the audit is not told which attacks (AuditConfig.attacks); False: only when named
    default: ClassVar[bool] = True
    two_sided: ClassVar[bool] = True         # has a verdict against never-seen facts
    ranked: ClassVar[bool] = True            # its per-fact values are ranks (lower = knows more); False: scores
    # fine-tunes a copy of the model (relearning): the costly kind, and not a black-box query of the model as
    # it is (an output hook, e.g. a guardrail, does not follow it onto the copy)
    fine_tunes: ClassVar[bool] = False
    # needs another of the audit's models (e.g. the oracle as a reference): `run` is not called, `measure_models`
    # is, with every model of the audit by role
    compares_models: ClassVar[bool] = False
    without: ClassVar[str] = ""               # compares_models: what to pass when it could not run

    def run(self, model: Any, facts: list[Fact], config: AuditConfig, relearn_n: int | None = None
            ) -> dict[str, Any]:
        """Per fact, the attack's best rank: {name: ranks, f"{name}_rows": evidence} (AttackRanks fields;
        a plugin's go to `AttackRanks.extra`). Run on the audited facts, then on the never-seen ones."""
        return {}

    def measure(self, model: Any, facts: list[Fact], context: KnowledgeContext, config: AuditConfig,
                result: ModelAudit) -> None:
        """An attack whose evidence needs the facts and the never-seen ones together writes it into
        `result` here (after every `run`)."""

    def measure_models(self, model: Any, facts: list[Fact], context: KnowledgeContext, config: AuditConfig,
                       result: ModelAudit, role: str, models: dict[str, Any]) -> None:
        """An attack that `compares_models` writes its evidence into `result` here: `role` is the audited model's
        ("edited", "reference" or "oracle"), `models` every model of the audit by role (absent ones left out)."""

    # -- reading the evidence (rank attacks; others override) ----------------------------------------------
    def ranks(self, ranks: AttackRanks | None) -> list[int] | list[float] | None:
        return ranks.ranks(self.name) if ranks is not None else None

    def ran(self, result: ModelAudit) -> bool:
        return self.ranks(result.attacks) is not None

    def hit(self, value: float, b: int) -> bool:
        """Did the attack succeed on a fact whose statistic is `value` (a rank: target in the top-B)?"""
        return value < b

    def per_fact(self, result: ModelAudit, b: int) -> list[bool]:
        """Per fact: did the attack succeed (target in the top-B)?"""
        return [self.hit(r, b) for r in self.ranks(result.attacks) or []]

    def chance(self, result: ModelAudit, b: int) -> float | None:
        """Its success on never-seen facts."""
        ranks = self.ranks(result.chance)
        return sum(self.hit(r, b) for r in ranks) / len(ranks) if ranks else None

    def above_chance(self, result: ModelAudit, b: int) -> float | None:
        """One-sided p that it succeeds more often on the facts than on never-seen ones (Fisher's exact test:
        the chance level is itself estimated)."""
        from scipy.stats import fisher_exact

        verdicts, ranks = self.per_fact(result, b), self.ranks(result.chance)
        if not verdicts or not ranks:
            return None
        k, n, kh = sum(verdicts), len(verdicts), sum(self.hit(r, b) for r in ranks)
        return float(fisher_exact([[k, n - k], [kh, len(ranks) - kh]], alternative="greater").pvalue)

    def verdict(self, result: ModelAudit, alpha: float = ALPHA, power: float = POWER) -> AttackVerdict | None:
        """The two-sided verdict of the facts' ranks against never-seen facts' (None without both)."""
        facts, holdout = self.ranks(result.attacks), self.ranks(result.chance)
        if not self.two_sided or not facts or not holdout:
            return None
        return compare(self.name, facts, holdout, statistic=self.statistic, negate=self.ranked, alpha=alpha,
                       power=power)

    def success_label(self, b: int) -> str:
        return f"{self.name} (top-{b})"

    def __init__(self) -> None:
        if not type(self).label:
            self.label = self.name.replace("_", " ")

    def __repr__(self) -> str:
        return f"<audit attack {self.name!r}: succeeds when {self.succeeds}>"


ATTACKS: Registry[Attack] = Registry("audit attack")


def register_attack(attack: Attack, replace: bool = False) -> Attack:
    """Make `attack` part of every audit (if `audited`), its report, plot and the benches' columns; returns it.
    Cost: none (the audit runs it)."""
    if not isinstance(attack, Attack):
        raise TypeError(f"register_attack takes an Attack instance (a subclass of excise.verify.Attack), got {attack!r}")
    for attr in ("name", "succeeds", "statistic"):
        if not hasattr(attack, attr):
            raise ValueError(f"an audit attack needs a class attribute {attr!r}")
    if attack.with_attack is not None and attack.with_attack not in ATTACKS:
        raise ValueError(f"{attack.name} rides along with {attack.with_attack!r}, which is not registered")
    return ATTACKS.register(attack, replace=replace)


def audited() -> tuple[str, ...]:
    """Returns the names of the attacks an audit runs by default and counts in its "any" success
    (AuditConfig.attacks), in registry order. Cost: none (reads the registry)."""
    return tuple(a.name for a in ATTACKS if a.audited)


def defaults() -> tuple[str, ...]:
    """Returns the attacks an audit runs when not told which (AuditConfig.attacks): the audited ones that are
    `default`. Cost: none."""
    return tuple(a.name for a in ATTACKS if a.audited and a.default)


def queries() -> tuple[str, ...]:
    """Returns the audited attacks that query the model as it is (no fine-tuning): cheap, and what an output
    hook answers for. Cost: none."""
    return tuple(a.name for a in ATTACKS if a.audited and not a.fine_tunes)


def two_sided() -> tuple[str, ...]:
    """Returns the names of the attacks that give a two-sided verdict against never-seen facts. Cost: none."""
    return tuple(a.name for a in ATTACKS if a.two_sided)


def ordered(by_attack: dict[str, Any]) -> list[tuple[str, Any]]:
    """Returns the (attack, value) pairs of `by_attack` in registry order (names it does not know last, as
    given): tables and prose list attacks in one order whatever order a result file stored. Cost: none."""
    place = {name: i for i, name in enumerate(ATTACKS.names())}
    return sorted(by_attack.items(), key=lambda kv: place.get(kv[0], len(place)))


def to_run(names: Sequence[str]) -> list[Attack]:
    """The attacks `names` select, with the ones that ride along with them, in registry order."""
    return [a for a in ATTACKS if a.name in names or (a.with_attack is not None and a.with_attack in names)]


def leakage(result: ModelAudit, alpha: float = ALPHA, power: float = POWER) -> dict[str, AttackVerdict]:
    """Every attack's two-sided verdict from one model's audit result (`AuditReport.models[role]`); attacks
    whose statistic on the facts or on never-seen facts the result lacks are left out."""
    if result.chance is None:
        return {}
    out = {a.name: a.verdict(result, alpha, power) for a in ATTACKS}
    return {k: v for k, v in out.items() if v is not None}
