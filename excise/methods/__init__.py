"""excise.methods: every deletion method under one name, and `delete`, which runs any of them.

    record = excise.methods.delete(model, facts, "npo", retain=retain, located=fisher_loc)
    excise.methods.METHODS.names()          # ga graddiff kl npo simnpo dpo swap rmu undo rome memit alphaedit ...
    excise.methods.register(MyMethod())     # a method of your own, from a notebook (see `Method`)

Every method returns one `EditRecord` (several ROME edits are recorded as
one), and restores the weights if it fails. Methods that take a mask
(gradient methods, ablate, task_vector, undo's teacher) are confined to the
`neurons` top neurons of `located` (a Localization with a "neuron" kind, e.g.
from `locate.fisher`); `neurons=0` lets them change every parameter (ablate
always needs located neurons).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from excise.context import KnowledgeContext
from excise.edit.record import EditRecord
from excise.facts import Fact
from excise.methods import (
    ablate,
    alphaedit,
    dpo,
    ga,
    graddiff,
    kl,
    memit,
    npo,
    rmu,
    rome,
    simnpo,
    swap,
    task_vector,
    undo,
)
from excise.methods.base import METHODS, Method, get, parse_option, register
from excise.methods.gradient import GradientMethod, unlearn
from excise.methods.memit import MEMIT_REACH, memit_weight

# The built-in methods, registered in this order (the order of `excise edit --help` and of the tables).
for _module in (ga, graddiff, kl, npo, simnpo, dpo, swap, rmu, undo, rome, memit, alphaedit, ablate, task_vector):
    register(_module.METHOD)

DEFAULT = "npo"
DEFAULT_NEURONS = 256

__all__ = ["delete", "METHODS", "Method", "GradientMethod", "register", "get", "unlearn", "needs_located",
           "memit_weight", "MEMIT_REACH", "DEFAULT", "DEFAULT_NEURONS", "parse_option"]


def needs_located(method: str, neurons: int) -> bool:
    """Returns whether `method` (with `neurons` top neurons) is confined to located neurons, and so needs a
    Localization. Cost: none."""
    m = METHODS.get(method)
    return m.mask == "required" or (m.mask == "optional" and neurons > 0)


def _context(model: Any, facts: list[Fact], method: Method, context: KnowledgeContext | None,
             retain: Sequence[Fact], stand_ins: Sequence[str] | None) -> KnowledgeContext:
    """The context given, or one derived from the model and the facts (nothing generated), with the
    retain facts and stand-ins given here on top; a required field still missing is an error."""
    needed = set(method.requires) | set(method.reads)
    if context is None and needed - {"retain"}:
        from excise.context import derive

        context = derive(model, facts, retain=list(retain) or None, generate=False)
    context = (context or KnowledgeContext()).override(retain=list(retain) or None, stand_ins=stand_ins)
    for name in method.requires:
        if not getattr(context, name):
            raise ValueError(f"{method.name} needs {name}: {_HOW.get(name, f'pass context.{name}')} "
                             f"({context.notes.get(name, 'not given')})")
    return context


_HOW = {
    "retain": "retain facts (what the model must keep), retain=[...] or --retain R.json",
    "stand_ins": "names of people (or entities) the model never saw, of the same kind as the subjects, e.g. "
                 "stand_ins=['Elara Voss', 'Tomas Brekke'] or --stand-ins",
    "sample": "text like the model's training text, context.sample or --sample S.txt",
}


def delete(model: Any, facts: Sequence[Fact], method: str = DEFAULT, retain: Sequence[Fact] = (),
           located: Any = None, neurons: int = DEFAULT_NEURONS, layer: int | None = None, seed: int = 0,
           progress: bool = True, stand_ins: Sequence[str] | None = None,
           context: KnowledgeContext | None = None, position: str | None = None,
           objective: str | None = None, **options: Any) -> EditRecord | Any:
    """Delete `facts` from `model` in place with `method` (a name in `METHODS`); return the record.

    context: where the retain facts, the stand-ins (swap), the covariance sample and the layer (rome, memit,
        alphaedit) come from when not given here (`excise.organism.context(facts)` for the organism);
        without one they are derived (`excise.context.derive`: a sample the model writes itself, never-seen
        names: recombined, or spelled like the subjects) and the record's meta says so. With no layer here or in the context, rome/memit
        trace each fact (`excise.locate.edit_site`) and edit at the (layer, position) it picks;
        `record.meta["site"]` keeps the site and why.
    layer, position, objective: rome/memit/alphaedit's (see `excise.methods.rank_one.SiteConfig`).
    options: any other field of the method's config (e.g. `steps=50`, undo's `teacher="npo"`); an unknown one
        is refused with the method's options.

    Returns the EditRecord (sisa, whose model is a SISA ensemble: its Deletion). Cost: the method's (see its module); a derived context costs nothing here
    (no text is generated; rome/memit/alphaedit sample text only when the context has none).
    """
    m = METHODS.get(method)
    facts = list(facts)
    if not facts:
        raise ValueError("nothing to delete: the fact list is empty")
    if neurons < 0:
        raise ValueError(f"neurons must be >= 0 (0: every parameter), got {neurons}")
    mask = None
    if needs_located(method, neurons):
        if located is None or "neuron" not in located.kinds:
            raise ValueError(f"{method} on located neurons needs a Localization with neuron scores "
                             "(e.g. excise.locate.fisher(model, facts, retain=...))"
                             + ("; or pass neurons=0" if m.mask == "optional" else ""))
        mask = located.to_components(neurons, kind="neuron")
    fields = {f.name for f in dataclasses.fields(m.Config)}
    given = {k: v for k, v in {"layer": layer, "position": position, "objective": objective}.items() if v is not None}
    ignored = sorted(set(given) - fields)
    if ignored:
        raise ValueError(f"{method} takes no {', '.join(ignored)} (rome, memit and alphaedit do)")
    config = m.configure_run(seed, progress, **given, **options)
    return m.run(model, facts, _context(model, facts, m, context, retain, stand_ins), config, mask)
