"""`audit`: attack a model on a set of facts and say what leaks, next to a reference and an oracle.

    report = excise.verify.audit(model, forget, reference=record.original(), oracle=True)
    report.summary()

For each model given (the edited one, and optionally the unedited
reference and the retrain oracle) it measures:

- probes: recall under every prompt family;
- attacks, each a per-fact statistic: black-box probes over every family
  (best rank), the logit lens (rank after every layer), relearning on the
  other half of the facts (rank), membership inference (answer-token
  Min-K%++) and the truth ratio;
- the same statistics on holdout facts the model never saw (from the
  KnowledgeContext: `excise.organism.context(facts)`, or
  `excise.context.derive(model, facts)` for any model), and per attack a
  two-sided verdict of the two distributions (`excise.verify.leakage`:
  leaks, over_suppressed, indistinguishable or underpowered), stored as
  "leakage" per model; Patil et al.'s top-B success and its chance level
  beside it;
- specificity: neighbour and retain recall, general-text loss;
- truth ratios (with `alternatives`), hence TOFU's forget quality against
  the oracle, and the organism utility.

The models given are never changed: relearning fine-tunes copies.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from excise.context import KnowledgeContext
from excise.facts import Fact
from excise.scoring import general_loss, recalled
from excise.verify.attacks import audited, defaults, leakage, to_run
from excise.verify.forget_quality import comparable, organism_utility, truth_ratios
from excise.verify.memorization import shared_forwards
from excise.verify.relearn import RelearnConfig
from excise.verify.report import AuditReport
from excise.verify.results import AttackRanks, ModelAudit
from excise.verify.specificity import neighbours_of
from excise.weights import model_fingerprint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditConfig:
    top_b: int = 20                       # an attack succeeds when the target is in the top-B (Patil et al.: 20)
    attacks: tuple[str, ...] = field(default_factory=defaults)  # the registered default attacks (excise.verify.ATTACKS)
    relearn: RelearnConfig = field(default_factory=RelearnConfig)
    # the relearning baseline: this many disjoint holdout samples of the audit's size, each relearned apart and
    # pooled (one is noisy: the organism's oracle read `leaks` on one of six 5% splits with one draw, none with ten;
    # excise.verify.attacks.relearn). Each costs a relearning run.
    relearn_draws: int = 1
    mia_fpr: float = 0.05                 # membership verdicts: the chance level
    seed: int = 0
    # with logit_lens, also Patil et al.'s head-projection attack (top-k or bottom-k at some of these hidden-state
    # indices; None: every intermediate one) as the attack "head_projection": success(attack=, b=4) is theirs
    lens_layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.top_b < 1:
            raise ValueError(f"top_b (B, the candidates an attack may name) must be >= 1, got {self.top_b}")
        if self.relearn_draws < 1:
            raise ValueError(f"relearn_draws (holdout samples the relearning baseline pools) must be >= 1, got "
                             f"{self.relearn_draws}")
        unknown = set(self.attacks) - set(audited())
        if unknown:
            raise ValueError(f"unknown attacks {sorted(unknown)}; choose from {audited()} (excise.verify.ATTACKS: "
                             "an attack that is not audited rides along with one that is)")


# what each context field makes computable, for the report's "not computed" line
NEEDS = {
    "holdout": "chance levels and membership inference",
    "retain": "retain recall and model utility",
    "general": "general-text loss and model utility",
    "alternatives": "truth ratios and forget quality",
    "oracle": "the retrain-oracle column, forget quality, privleak and the reference membership attack",
}


def _check_vocabulary(model: Any, other: Any, role: str) -> None:
    if other.cfg.d_vocab != model.cfg.d_vocab or other.tokenizer.get_vocab() != model.tokenizer.get_vocab():
        raise ValueError(f"the {role} model has another vocabulary ({other.cfg.d_vocab} tokens vs "
                         f"{model.cfg.d_vocab}); compare models that share the edited model's tokenizer")


def _run(attacks: list, model: Any, facts: list[Fact], config: AuditConfig, bar, relearn_n: int | None = None
         ) -> dict[str, Any]:
    """Every selected attack's per-fact ranks and evidence on `facts` (`Attack.run`)."""
    out: dict[str, Any] = {}
    with shared_forwards():                  # the memorization attacks read one forward of the model
        for attack in attacks:
            if attack.compares_models:
                continue
            found = attack.run(model, facts, config, relearn_n=relearn_n)
            if found:
                out |= found
                bar.update()
    return out


def _audit_one(model: Any, facts: list[Fact], ctx: KnowledgeContext, config: AuditConfig, name: str,
               progress: bool, models: dict[str, Any]) -> ModelAudit:
    attacks = to_run(config.attacks)
    steps = 3 * len(config.attacks) + 4
    with tqdm(total=steps, desc=f"audit {name}", disable=not progress, leave=False) as bar:
        t0 = time.perf_counter()
        res = ModelAudit(attacks=AttackRanks.of(_run(attacks, model, facts, config, bar)), neighbours=[], retain=[],
                         seconds=0.0)
        if ctx.holdout:
            chance = _run(attacks, model, ctx.holdout, config, bar, relearn_n=len(facts))
            res.chance = AttackRanks.of({k: v for k, v in chance.items() if not k.endswith("_rows")})
            for attack in attacks:
                attack.measure(model, facts, ctx, config, res)
                if attack.compares_models:
                    attack.measure_models(model, facts, ctx, config, res, name, models)
            if ctx.alternatives is not None and comparable(ctx.holdout, ctx.alternatives):
                res.chance.truth_ratios = truth_ratios(model, comparable(ctx.holdout, ctx.alternatives),
                                                       ctx.alternatives)[0].tolist()
        bar.update()
        res.neighbours = recalled(model, neighbours_of(facts))
        res.retain = recalled(model, ctx.retain)
        res.general_loss = general_loss(model, ctx.general) if ctx.general else None
        bar.update()
        if ctx.alternatives is not None and comparable(facts, ctx.alternatives):
            res.truth_ratios = truth_ratios(model, comparable(facts, ctx.alternatives), ctx.alternatives)[0].tolist()
        if ctx.alternatives is not None and comparable(ctx.retain, ctx.alternatives) and ctx.general:
            res.utility = organism_utility(model, ctx.retain, ctx.alternatives, ctx.general)
        res.leakage = leakage(res)
        bar.update(bar.total - bar.n)
        res.seconds = time.perf_counter() - t0
    return res


_KEPT: dict[tuple, ModelAudit] = {}       # the last few audits of unchanged weights (the reference, audited again)
_KEEP = 8


def _audit_kept(model: Any, facts: list[Fact], ctx: KnowledgeContext, config: AuditConfig, name: str,
                progress: bool, models: dict[str, Any]) -> ModelAudit:
    """`_audit_one`, remembered: the same weights (fingerprint), facts, context and config give the same audit
    (every attack is seeded), so a reference audited beside several edits is audited once. Never kept: an
    audit with an attack that compares models (it depends on the other models too), or of a model with hooks
    attached (a guardrail changes what the same weights answer)."""
    if any(a.compares_models for a in to_run(config.attacks)) or _hooked(model):
        return _audit_one(model, facts, ctx, config, name, progress, models)
    key = (model_fingerprint(model), tuple(facts), tuple(ctx.holdout), tuple(ctx.retain), tuple(ctx.general),
           ctx.alternatives, config)
    if key not in _KEPT:
        if len(_KEPT) >= _KEEP:
            _KEPT.pop(next(iter(_KEPT)))
        _KEPT[key] = _audit_one(model, facts, ctx, config, name, progress, models)
    return copy.deepcopy(_KEPT[key])


def _hooked(model: Any) -> bool:
    """Whether an intervention is attached to `model`: a hook on any of its TransformerLens hook points, a torch
    hook of anyone's but the libraries' own (transformers and the bridge keep output-capturing hooks on their
    modules), or a global torch hook."""
    from torch.nn.modules import module as torch_module
    from transformer_lens.hook_points import HookPoint

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    for m in model.modules():
        for hooks in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks):
            for fn in hooks.values():
                if isinstance(m, HookPoint) or not getattr(fn, "__module__", "").startswith(LIBRARY_HOOKS):
                    return True
    return False


LIBRARY_HOOKS = ("transformers.", "transformer_lens.")


def _not_computed(ctx: KnowledgeContext, oracle: Any, config: AuditConfig, edited: ModelAudit) -> dict[str, str]:
    """What the audit could not compute, and why: a context field missing, or an attack named without the models
    it compares with."""
    have = {"holdout": ctx.holdout, "retain": ctx.retain, "general": ctx.general, "alternatives": ctx.alternatives,
            "oracle": oracle}
    why = {field: ctx.notes.get(field, f"pass {field}=") for field in NEEDS}
    why["oracle"] = "pass oracle= (a model trained without the facts)" + \
        (", or oracle=True for the context's" if ctx.oracle is not None else "")
    out = {what: f"no {field}: {why[field]}" for field, what in NEEDS.items() if have[field] is None or have[field] == []}
    for attack in to_run(config.attacks):
        if attack.compares_models and not attack.ran(edited):
            out[f"the {attack.name} attack"] = attack.without
    return out


def audit(model: Any, facts: Sequence[Fact], reference: Any = None, attacks: Sequence[str] | None = None,
          seed: int = 0, *, oracle: Any = None, context: KnowledgeContext | None = None,
          holdout: Sequence[Fact] | None = None, retain: Sequence[Fact] | None = None,
          general: Sequence[str] | None = None, alternatives: Callable[[Fact], Sequence[str]] | None = None,
          config: AuditConfig | None = None, progress: bool = True) -> AuditReport:
    """Audit `model` on `facts` (the ones meant to be gone); returns an AuditReport (see the module docstring).

    - reference: the model before the edit (e.g. `record.original()`).
    - context: never-seen facts, facts to keep, general text, wrong answers and
      the oracle (`excise.organism.context(facts)` for the organism;
      `excise.context.derive(model, facts, ...)` for any model). Without one,
      the holdout, retain, general and alternatives given here are used as
      they are; what is missing is reported as not computed.
    - holdout, retain, general, alternatives: override the context's.
    - oracle: a model trained without the facts; `True` takes the context's
      (the organism's is retrained on first use: minutes, then cached).

    Cost per model: the attacks on the facts and on the holdout (two relearning
    runs of `config.relearn.steps` steps per fold), plus one forward per
    probe family; seconds on the organism for a 5% split.
    """
    facts = list(facts)
    if not facts:
        raise ValueError("audit needs at least one fact (the facts that should be gone)")
    config = config or AuditConfig(attacks=tuple(attacks) if attacks is not None else defaults(), seed=seed)
    if config.relearn.seed != config.seed:
        config = AuditConfig(**{**{k: getattr(config, k) for k in config.__dataclass_fields__},
                                "relearn": RelearnConfig(**{**asdict(config.relearn), "seed": config.seed})})
    ctx = (context or KnowledgeContext()).override(holdout=holdout, retain=retain, general=general,
                                                   alternatives=alternatives)
    if oracle is True:
        if ctx.oracle is None:
            raise ValueError("oracle=True takes the context's oracle, and this context has none: pass the oracle "
                             "model itself (trained without the facts), or context=excise.organism.context(facts)")
        # a context may hold a model, or something that builds one on first use (the organism's LazyOracle)
        oracle = ctx.oracle if isinstance(ctx.oracle, torch.nn.Module) else ctx.oracle()
    models = {"edited": model, "reference": reference, "oracle": oracle}
    for role, m in models.items():
        if m is not None and m is not model:
            _check_vocabulary(model, m, role)
    t0 = time.perf_counter()
    present = {role: m for role, m in models.items() if m is not None}
    results = {role: _audit_kept(m, facts, ctx, config, role, progress, present) for role, m in present.items()}
    not_computed = _not_computed(ctx, oracle, config, results["edited"])
    return AuditReport(
        config={**asdict(config), "n_holdout": len(ctx.holdout), "n_retain": len(ctx.retain),
                "n_general": len(ctx.general), "has_alternatives": ctx.alternatives is not None,
                "context": {k: v for k, v in ctx.notes.items() if k in NEEDS}, "not_computed": not_computed},
        facts=[{"subject": f.subject, "relation": f.relation, "target": f.target} for f in facts],
        neighbours=[{"subject": f.subject, "relation": f.relation} for f in neighbours_of(facts)],
        models=results,
        seconds=time.perf_counter() - t0,
    )
