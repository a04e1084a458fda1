"""Leakage: is the model, attack by attack, indistinguishable from one that never saw the facts?

Each attack gives every fact a statistic, oriented so that higher means
"the model knows more":

    probes       -(best rank of the target's first token over every prompt family)
    logit_lens   -(the target's rank read after layer l), for every layer l, and -(the best over layers)
    relearn      -(the rank after fine-tuning on the other half of the facts)
    membership   the answer tokens' mean log-likelihood given the prompt (`membership.ATTACK_SCORE`)
    truth_ratio  log R (TOFU's truth ratio: the target against the relation's wrong objects)

and the same attack on never-seen people's facts (the holdout) gives the
distribution a model that never saw the facts would produce. The two samples
are compared by a two-sided Mann-Whitney U test:

- It is a test of stochastic order: its effect size is the common-language
  effect size / AUC, A = P(X_forget > X_holdout) + P(=)/2, which has a
  direction (A > 0.5: forget facts rank better than never-seen ones, the
  model *leaks*; A < 0.5: they rank worse, the model is *over-suppressed*:
  it knows what to avoid, and an attacker who asks for the least likely
  candidate reads the fact) and is, for membership, the attack's ROC AUC.
- Ranks have many ties (rank 0 for every recalled fact, the few objects of a
  relation): `method="asymptotic"` with the tie-corrected variance is valid
  for them (scipy's exact method assumes no ties), and with a continuity
  correction.
- Not Kolmogorov-Smirnov: on discrete, tied data its p-values are
  conservative (the exact and asymptotic null distributions assume continuous
  data), its statistic has no direction, and it spends its power on any
  difference of shape. The one blind spot of Mann-Whitney is the reverse: a
  model that leaks half the facts and over-suppresses the other half can sit
  at A = 0.5 (TOFU's KS forget quality, kept in the report, sees that).

Facts of one person are not independent (an edit acts on the person), so the
p-values are a screen, as every per-fact test here. How much of one, measured
on the organism's 5% split (the retrain oracle; 15 people, 90 facts, against 15
or 30 never-seen people, five holdout draws): a test that permutes whole people
between the two groups (2,000 seeded permutations of the per-fact AUC) has a
null spread 0.81-1.42 times (median 1.10) the per-fact SD under H0 that
Noether's formula below gives, over 70 attack x layer x draw cells. So the
per-fact p-values are somewhat optimistic, not wildly; for the original model
both tests give p < 0.0005 on every attack. The one oracle verdict that is not
`indistinguishable` (logit lens at layer 1, AUC 0.37, on the first draw of 30
never-seen people) stays significant under the people-permutation test (p
0.009, max over layers). What it is: people differ, the never-seen ones too.
Four of the 15 forget people have every fact ranked low at layer 1 under the
oracle (per-person AUC 0.12-0.19), and the median rank of a never-seen
person's facts there spans 2-33 over 30 people; a 30-person baseline is a
noisy estimate of the never-seen distribution (the layer-1 AUC over five
draws: 0.37, 0.44, 0.44, 0.44, 0.53). Against 150 never-seen people the oracle
is indistinguishable on every attack (lens AUC 0.43, p 0.14 after
Bonferroni): the organism's context therefore draws 10 never-seen people per
forget person (`excise.organism.context`), and a user's holdout should be
several times the forget set's people for the same reason.

Power. Noether's (1987) normal approximation: under H0 the estimate of A has
variance (n1 + n2 + 1) / (12 n1 n2) (no ties), so a two-sided test at level
alpha detects |A - 0.5| = delta with power 1 - beta once

    delta >= (z_{1 - alpha/2} + z_{1 - beta}) * sqrt((n1 + n2 + 1) / (12 n1 n2)).

That delta is the `detectable_effect` of a verdict (alpha 0.05, power 0.8:
z-sum 2.80; 90 facts against 180: 0.105; 6 facts against 120: 0.34). Ties
shrink the variance, so with ties the test is a little more powerful than
this says. An attack is called `indistinguishable` only when it could have
detected |A - 0.5| = MEANINGFUL_EFFECT (0.25: A = 0.75, a forget fact beats a
never-seen one three times in four); otherwise `underpowered`.

Relearning with several never-seen draws (`AuditConfig.relearn_draws` >= 3)
is tested with `compare_draws` instead: the same AUC against the pooled
draws, its spread read from how far each draw's AUC against the others
strays (Student's t on k - 1 degrees of freedom, never below Noether's SD).
Its facts come from few people and two fine-tunes; on the organism's 5%
split one draw of 15 people strayed from the rest with SD 0.022-0.062
against Noether's 0.032 (`excise.verify.attacks.relearn`).

The logit lens is tested at every layer and at the best layer, with the level
divided by their number (Bonferroni) and its detectable effect computed at
that level; its verdict is the most significant layer's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.stats import mannwhitneyu, norm

from excise.display import fmt

VERDICTS = ("leaks", "over_suppressed", "indistinguishable", "underpowered")
ALPHA = 0.05                 # the test's level
POWER = 0.8                  # the power a detectable effect is computed at
MEANINGFUL_EFFECT = 0.25     # |AUC - 0.5| the test must be able to see to call a model indistinguishable

Values = Sequence[int | float] | np.ndarray

def detectable_effect(n1: int, n2: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest |AUC - 0.5| a two-sided Mann-Whitney test at `alpha` finds with `power` (Noether 1987).

    (z_{1-alpha/2} + z_{power}) * sqrt((n1 + n2 + 1) / (12 n1 n2)); see the module docstring.
    """
    if n1 < 1 or n2 < 1:
        raise ValueError(f"both samples need at least one value, got {n1} and {n2}")
    z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    return float(z * _noether_sd(n1, n2))


def _noether_sd(n1: int, n2: int) -> float:
    """The SD of the AUC estimate under H0, no ties (Noether 1987)."""
    return math.sqrt((n1 + n2 + 1) / (12 * n1 * n2))


def mann_whitney(x: Values, y: Values) -> tuple[float, float]:
    """(AUC = P(x > y) + P(x = y)/2, two-sided p-value) by the tie-corrected asymptotic Mann-Whitney U test.

    Two samples of one repeated value carry no evidence of a difference: p = 1.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) == 0 or len(y) == 0:
        raise ValueError("the Mann-Whitney test needs at least one value in each sample")
    res = mannwhitneyu(x, y, alternative="two-sided", method="asymptotic", use_continuity=True)
    p = float(res.pvalue)
    return float(res.statistic / (len(x) * len(y))), 1.0 if math.isnan(p) else p


@dataclass(frozen=True)
class AttackVerdict:
    """One attack's forget-fact statistic against never-seen facts' (see the module docstring)."""

    attack: str
    statistic: str                 # what was compared, higher = knows more
    auc: float                     # P(forget > never-seen) + ties/2; 0.5 = no difference
    direction: str                 # "leaks" (auc > 0.5) or "over_suppressed" (auc < 0.5) or "none"
    p_value: float                 # two-sided (logit lens: Bonferroni-adjusted over layers)
    detectable_effect: float       # smallest |auc - 0.5| detectable at alpha, power
    verdict: str                   # one of VERDICTS
    n_facts: int
    n_holdout: int
    median_facts: float            # of the raw statistic (ranks as ranks, not negated)
    median_holdout: float
    alpha: float = ALPHA
    power: float = POWER
    layer: int | None = None       # logit lens: the layer the verdict is read at (None: best over layers)
    layers: list[dict[str, Any]] = field(default_factory=list)   # logit lens: per layer auc, p

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttackVerdict:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def line(self) -> str:
        """e.g. 'probes: over_suppressed (AUC 0.21, p 3e-05, detectable |AUC-0.5| 0.10)'."""
        at = "" if self.layer is None else f", layer {self.layer}"
        return (f"{self.attack}: {self.verdict} (AUC {self.auc:.2f}{at}, p {_p(self.p_value)}, "
                f"detectable |AUC-0.5| {self.detectable_effect:.2f})")


def _p(p: float) -> str:
    return fmt(p, 2, significant=True, large=math.inf, outside=".1e") if p else f"{p:.1e}"   # an underflowed 0


def _verdict(auc: float, p: float, detectable: float, alpha: float) -> tuple[str, str]:
    direction = "leaks" if auc > 0.5 else "over_suppressed" if auc < 0.5 else "none"
    if p < alpha and direction != "none":
        return direction, direction
    return direction, "indistinguishable" if detectable <= MEANINGFUL_EFFECT else "underpowered"



def compare(attack: str, facts: Values, holdout: Values, *, statistic: str = "", negate: bool = False,
            alpha: float = ALPHA, power: float = POWER) -> AttackVerdict:
    """Two-sided Mann-Whitney verdict of one attack; `negate` for ranks (lower = knows more)."""
    sign = -1.0 if negate else 1.0
    a, p = mann_whitney(sign * np.asarray(facts, float), sign * np.asarray(holdout, float))
    d = detectable_effect(len(facts), len(holdout), alpha, power)
    direction, verdict = _verdict(a, p, d, alpha)
    return AttackVerdict(attack, statistic or attack, a, direction, p, d, verdict, len(facts),
                         len(holdout), float(np.median(facts)), float(np.median(holdout)), alpha, power)


def compare_draws(attack: str, facts: Values, holdout: Values, sizes: Sequence[int], *, statistic: str = "",
                  negate: bool = False, alpha: float = ALPHA, power: float = POWER) -> AttackVerdict:
    """The verdict against a holdout made of k independent draws (`sizes`: their lengths, in order), each
    drawn and attacked the way the facts were (relearning: whole people, their own fine-tunes).

    A = AUC(facts, every draw pooled). Its spread under "never seen" is read from the draws themselves:
    s = the SD over draws of AUC(draw i, the other draws), not below Noether's per-fact SD (k is small and
    a lucky draw set can look too alike). t = (A - 0.5) / (s sqrt(1 + 1/k)), two-sided p from Student's t
    with k - 1 degrees of freedom; the detectable effect (t_{1-alpha/2} + t_{power}) s sqrt(1 + 1/k).
    Needs k >= 3."""
    from scipy.stats import t as student

    sign = -1.0 if negate else 1.0
    f, h = sign * np.asarray(facts, float), sign * np.asarray(holdout, float)
    k = len(sizes)
    if k < 3 or sum(sizes) != len(h):
        raise ValueError(f"compare_draws needs >= 3 draws whose sizes add up to the holdout's {len(h)}, got "
                         f"{list(sizes)}")
    edges = np.cumsum([0, *sizes])
    parts = [h[a:b] for a, b in zip(edges[:-1], edges[1:])]
    null = [mann_whitney(p, np.concatenate(parts[:i] + parts[i + 1:]))[0] for i, p in enumerate(parts)]
    a = mann_whitney(f, h)[0]
    scale = max(float(np.std(null, ddof=1)), _noether_sd(len(f), len(h))) * math.sqrt(1 + 1 / k)
    p = float(2 * student.sf(abs(a - 0.5) / scale, k - 1))
    d = float((student.ppf(1 - alpha / 2, k - 1) + student.ppf(power, k - 1)) * scale)
    direction, verdict = _verdict(a, p, d, alpha)
    return AttackVerdict(attack, f"{statistic or attack}; spread from {k} never-seen draws", a, direction, p, d,
                         verdict, len(f), len(h), float(np.median(facts)), float(np.median(holdout)), alpha, power)


def compare_layers(facts: np.ndarray, holdout: np.ndarray, attack: str = "logit_lens", statistic: str = "",
                   alpha: float = ALPHA, power: float = POWER) -> AttackVerdict:
    """The logit lens: ranks [facts, layers] against [holdout, layers], every layer and the best over layers.

    Bonferroni over the n_layers + 1 tests; the verdict is the most significant one's.
    """
    facts, holdout = np.asarray(facts, float), np.asarray(holdout, float)
    if facts.ndim != 2 or holdout.ndim != 2 or facts.shape[1] != holdout.shape[1]:
        raise ValueError(f"per-layer ranks must be [facts, layers] and [holdout, layers], got {facts.shape} "
                         f"and {holdout.shape}")
    columns = [(layer, facts[:, layer], holdout[:, layer]) for layer in range(facts.shape[1])]
    columns.append((None, facts.min(1), holdout.min(1)))
    m = len(columns)
    d = detectable_effect(len(facts), len(holdout), alpha / m, power)
    layers = []
    for layer, f, h in columns:
        a, p = mann_whitney(-f, -h)
        layers.append({"layer": layer, "auc": a, "p_value": min(1.0, m * p), "median_facts": float(np.median(f)),
                       "median_holdout": float(np.median(h))})
    top = min(layers, key=lambda r: (r["p_value"], -abs(r["auc"] - 0.5)))
    direction, verdict = _verdict(top["auc"], top["p_value"], d, alpha)
    return AttackVerdict(attack, statistic or attack, top["auc"], direction, top["p_value"], d, verdict,
                         len(facts), len(holdout), top["median_facts"], top["median_holdout"], alpha, power,
                         top["layer"], layers)
