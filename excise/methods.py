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
from excise.facts import Fact

GRADIENT = ("npo", "graddiff", "ga", "kl", "dpo", "swap")
METHODS = (*GRADIENT, "rome", "memit", "ablate", "task_vector")
DEFAULT = "npo"
DEFAULT_NEURONS = 256

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
           context: KnowledgeContext | None = None) -> E.EditRecord:
    """Delete `facts` from `model` in place with `method`; return the record.

    context: where the layer (rome/memit), the covariance sample (rome/memit)
        and the stand-ins (swap) come from when not given here
        (`excise.organism.context(facts)` for the organism); without one they
        are derived (`excise.context.derive`: the layer a third of the way up,
        a sample the model writes itself, never-seen recombined names) and
        the record's meta says so.
    stand_ins: for `swap`, names the model never saw.
    """
    check_method(method)
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
    record = _delete(model, facts, method, retain, mask, layer, seed, progress, stand_ins, context)
    return record


def _delete(model: Any, facts: list[Fact], method: str, retain: Sequence[Fact], mask: Any, layer: int | None,
            seed: int, progress: bool, stand_ins: Sequence[str] | None,
            context: KnowledgeContext | None) -> E.EditRecord:
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
    layer_note = "given" if layer is not None else ctx.notes.get("layer", "given")
    layer = layer if layer is not None else ctx.layer
    sample = ctx.sample
    if not sample:
        sample = E.generated_sample(model, seed=seed)
        log.warning("%s: no covariance sample given; using %d texts the model wrote itself "
                    "(excise.edit.generated_sample, seed %d)", method, len(sample), seed)
    if method == "rome":
        shared = [s for s, n in Counter(f.subject for f in facts).items() if n > 1]
        if shared:
            log.warning("rome writes one value per subject key; %d subject(s) have several facts here (e.g. %r), "
                        "so later edits overwrite earlier ones (on the organism 0.0-0.5 of a person's 6 facts "
                        "stayed recalled); for whole-person deletion use npo", len(shared), shared[0])
        record = E.rome_each(model, facts, E.RomeConfig(layer=layer, objective="head_projection_unlikelihood"),
                             sample=sample, progress=progress)
    else:
        record = E.memit(model, facts, E.MemitConfig(layers=(layer,), mom2_weight=300.0), sample=sample)
    record.meta["context"] = {"layer": layer_note, "sample": ctx.notes.get("sample", "derived: generated_sample")}
    return record
