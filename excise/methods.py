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


def default_layer(model: Any) -> int:
    """ROME/MEMIT's layer when none is given: 0 on the organism (see the edit benchmark), else a
    third of the way up, where ROME finds subject recall in GPT-style models."""
    from excise import organism

    return 0 if organism.is_organism(model) else model.cfg.n_layers // 3


def organism_strangers(model: Any, seed: int = 0, n: int = 60, holdout_people: int = 60) -> list[str]:
    """Stand-ins for `swap` on the organism: never-seen names, none of them among the holdout people
    an audit with the same seed uses for chance levels (up to `holdout_people` of them)."""
    from excise import organism

    if not organism.is_organism(model):
        raise ValueError("swap needs stand_ins: names of people (or entities) the model never saw, of the same "
                         "kind as the subjects, e.g. stand_ins=['Elara Voss', 'Tomas Brekke']")
    world = organism.world()
    audit_people = {f.subject for f in world.holdout(holdout_people, seed=seed + 1)}
    return world.strangers(n, seed=seed + 2, exclude=audit_people)


def delete(model: Any, facts: Sequence[Fact], method: str = DEFAULT, retain: Sequence[Fact] = (),
           located: Any = None, neurons: int = DEFAULT_NEURONS, layer: int | None = None, seed: int = 0,
           progress: bool = True, stand_ins: Sequence[str] | None = None) -> E.EditRecord:
    """Delete `facts` from `model` in place with `method`; return the record.

    stand_ins: for `swap`, names the model never saw (the organism draws its own strangers, apart
    from the audit's default holdout people).
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
    if layer is None:
        layer = default_layer(model)
    if method in GRADIENT:
        if method != "ga" and not retain:
            raise ValueError(f"{method} needs retain facts (what the model must keep)")
        config = E.UnlearnConfig.for_method(method, seed=seed, progress=progress)
        if method == "swap" and not stand_ins:
            stand_ins = organism_strangers(model, seed)
        return E.unlearn(model, facts, list(retain), mask=mask, config=config, stand_ins=stand_ins)
    if method == "rome":
        shared = [s for s, n in Counter(f.subject for f in facts).items() if n > 1]
        if shared:
            log.warning("rome writes one value per subject key; %d subject(s) have several facts here (e.g. %r), "
                        "so later edits overwrite earlier ones (on the organism 0.0-0.5 of a person's 6 facts "
                        "stayed recalled); for whole-person deletion use npo", len(shared), shared[0])
        return E.rome_each(model, facts, E.RomeConfig(layer=layer, objective="head_projection"), progress=progress)
    if method == "memit":
        return E.memit(model, facts, E.MemitConfig(layers=(layer,), mom2_weight=300.0))
    if method == "ablate":
        return E.ablate(model, mask, mode="zero")
    return E.task_vector(model, facts, mask=mask)
