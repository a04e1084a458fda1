"""One name per deletion method, shared by `excise demo` and `excise edit`.

    record = excise.methods.delete(model, facts, "npo", retain=retain, located=fisher_loc)

Every method returns one `EditRecord` (several ROME edits are recorded as
one), and restores the weights if it fails. Gradient methods and ablation
are confined to the `neurons` top neurons of `located` (a Localization with
a "neuron" kind, e.g. from `locate.fisher`); `neurons=0` lets gradient
methods change every parameter.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

from excise import edit as E
from excise.context import KnowledgeContext
from excise.edit.rome import OBJECTIVES
from excise.facts import Fact

GRADIENT = ("npo", "graddiff", "ga", "kl", "dpo", "swap")
METHODS = (*GRADIENT, "rome", "memit", "ablate", "task_vector")
DEFAULT = "npo"
ROME_OBJECTIVE = "head_projection_unlikelihood"   # rome/memit's deletion objective unless one is given
DEFAULT_NEURONS = 256

# MEMIT's lambda for deletion, set by the share of the value shift a fact's own key should reach. For one key k,
# Delta = (lambda C + k k^T)^-1 k r^T moves k's output by r * a / (1 + a), a = k^T C^-1 k / lambda, and
# E[k^T C^-1 k] = d_mlp over the sample's keys (C = E[k k^T]): a fixed lambda reaches less the narrower the MLP.
# Measured at layer 0 on the foreign test models (tests/foreign.py, 3 facts, training text as sample): k^T C^-1 k
# 268-298 (GPT-2, d_mlp 256) and 114-204 (Llama, d_mlp 172); reached share (= a/(1+a) to 0.01) with lambda
# 300: 0.47-0.51 / 0.27-0.40, request recall after 1.00 / 1.00; lambda 30: 0.90-0.91 / 0.79-0.87, recall
# 1.00 / 0.33 (other subjects kept 0.98 / 1.00); lambda 1: 1.00 / 0.99, recall 1.00 / 0.33. On the organism
# (d_mlp 512) the old 300 reached about 0.63. lambda = d_mlp * (1 - reach) / reach: 0.9 of the shift for a
# typical key (d_mlp / 9: organism 57, GPT-2 28, Llama 19).
MEMIT_REACH = 0.9


def memit_weight(d_mlp: int, reach: float = MEMIT_REACH) -> float:
    """MEMIT's mom2_weight that lets a typical key (k^T C^-1 k = d_mlp) reach `reach` of its value shift."""
    if not 0 < reach < 1:
        raise ValueError(f"reach must be in (0, 1), got {reach}")
    return d_mlp * (1 - reach) / reach

log = logging.getLogger(__name__)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown deletion method {method!r}; choose one of {', '.join(METHODS)}")
    return method


def needs_located(method: str, neurons: int) -> bool:
    """Whether `method` is confined to located neurons (and so needs a Localization)."""
    return method == "ablate" or (method in GRADIENT and neurons > 0)


def _context(model: Any, facts: list[Fact], context: KnowledgeContext | None) -> KnowledgeContext:
    """The context given, or one derived from the model and the facts (nothing generated yet)."""
    if context is not None:
        return context
    from excise.context import derive

    return derive(model, facts, generate=False)


def delete(model: Any, facts: Sequence[Fact], method: str = DEFAULT, retain: Sequence[Fact] = (),
           located: Any = None, neurons: int = DEFAULT_NEURONS, layer: int | None = None, seed: int = 0,
           progress: bool = True, stand_ins: Sequence[str] | None = None,
           context: KnowledgeContext | None = None, position: str | None = None,
           objective: str = ROME_OBJECTIVE) -> E.EditRecord:
    """Delete `facts` from `model` in place with `method`; return the record.

    context: where the layer (rome/memit), the covariance sample (rome/memit)
        and the stand-ins (swap) come from when not given here
        (`excise.organism.context(facts)` for the organism); without one they
        are derived (`excise.context.derive`: a sample the model writes
        itself, never-seen recombined names) and the record's meta says so.
        With no layer here or in the context, rome/memit trace each fact
        (`excise.locate.edit_site`, one MLP trace per fact: seconds) and edit
        at the (layer, position) it picks: the prompt's last token at its
        MLP peak in the late layers when the trace says the answer is
        restored there, else the last subject token; `record.meta["site"]`
        keeps the site, the per-layer scores of both positions and why.
    position: rome/memit's edit position ("subject_last" or "prompt_last"); None: the traced one, or
        "subject_last" (ROME's) when a layer is given.
    MEMIT's lambda is `memit_weight(d_mlp)` (0.9 of the shift for a typical key), its values optimized
    through the write (`MemitConfig.through_edit`).
    stand_ins: for `swap`, names the model never saw.
    objective: rome/memit's deletion objective (`excise.edit.rome.OBJECTIVES`; default
        head_projection_unlikelihood).
    """
    check_method(method)
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    facts = list(facts)
    if not facts:
        raise ValueError("nothing to delete: the fact list is empty")
    if neurons < 0:
        raise ValueError(f"neurons must be >= 0 (0: every parameter), got {neurons}")
    needs_mask = needs_located(method, neurons)
    if needs_mask and (located is None or "neuron" not in located.kinds):
        raise ValueError(f"{method} on located neurons needs a Localization with neuron scores "
                         "(e.g. excise.locate.fisher(model, facts, retain=...)); or pass neurons=0")
    mask = located.to_components(neurons, kind="neuron") if needs_mask else None
    if position is not None:
        from excise.edit.rank_one import check_position

        position = check_position(position)
    record = _delete(model, facts, method, retain, mask, layer, seed, progress, stand_ins, context, position,
                     objective)
    return record


def _delete(model: Any, facts: list[Fact], method: str, retain: Sequence[Fact], mask: Any, layer: int | None,
            seed: int, progress: bool, stand_ins: Sequence[str] | None,
            context: KnowledgeContext | None, position: str | None = None,
            objective: str = ROME_OBJECTIVE) -> E.EditRecord:
    if method in GRADIENT:
        if method != "ga" and not retain:
            raise ValueError(f"{method} needs retain facts (what the model must keep)")
        config = E.UnlearnConfig.for_method(method, seed=seed, progress=progress)
        if method == "swap" and not stand_ins:
            ctx = _context(model, facts, context)
            stand_ins = ctx.stand_ins
            if not stand_ins:
                raise ValueError("swap needs stand_ins: names of people (or entities) the model never saw, of the "
                                 f"same kind as the subjects, e.g. stand_ins=['Elara Voss', 'Tomas Brekke'] "
                                 f"({ctx.notes.get('stand_ins', '')})")
        return E.unlearn(model, facts, list(retain), mask=mask, config=config, stand_ins=stand_ins)
    if method in ("ablate", "task_vector"):
        return E.ablate(model, mask, mode="zero") if method == "ablate" else E.task_vector(model, facts, mask=mask)
    ctx = _context(model, facts, context)
    site = None
    if layer is not None:
        layer_note = "given"
    elif ctx.layer is not None:
        layer, layer_note = ctx.layer, ctx.notes.get("layer", "given")
    else:                                        # no layer anywhere: where the trace points (one trace per fact)
        from excise.locate.site import edit_site

        site = edit_site(model, facts, seed=seed)
        layer, layer_note = site.layer, f"traced: {site.reason}"
        if position is not None and position != site.position:
            raise ValueError(f"position={position!r} was given without a layer, and the trace picks {site.position} "
                             f"({site.summary()}); pass layer= with the position to edit elsewhere")
        position = site.position
        log.info("%s: %s", method, site.summary())
    position = position or "subject_last"
    sample = ctx.sample
    if not sample:
        sample = E.generated_sample(model, seed=seed)
        log.warning("%s: no covariance sample given; using %d texts the model wrote itself "
                    "(excise.edit.generated_sample, seed %d)", method, len(sample), seed)
    if method == "rome":
        shared = [s for s, n in Counter(f.subject for f in facts).items() if n > 1]
        if shared and position == "subject_last":
            log.warning("rome writes one value per subject key; %d subject(s) have several facts here (e.g. %r), "
                        "so later edits overwrite earlier ones (on the organism 0.0-0.5 of a person's 6 facts "
                        "stayed recalled); for whole-person deletion use npo", len(shared), shared[0])
        record = E.rome_each(model, facts, E.RomeConfig(layer=layer, objective=objective, position=position),
                             sample=sample, progress=progress)
    else:
        weight = memit_weight(model.cfg.d_mlp)
        config = E.MemitConfig(layers=(layer,), mom2_weight=weight, through_edit=True, position=position,
                               objective=objective)
        record = E.memit(model, facts, config, sample=sample)
    record.meta["context"] = {"layer": layer_note, "position": position,
                              "sample": ctx.notes.get("sample", "derived: generated_sample")}
    if site is not None:
        record.meta["site"] = site.to_dict()
    return record
