"""What rome, memit and alphaedit share: where to write (layer and position), the covariance sample, and a
watch on what the edit does to other subjects' facts while it runs."""

from __future__ import annotations

import logging
import random
import warnings
from dataclasses import dataclass
from typing import Any

from excise.context import KnowledgeContext
from excise.edit.rank_one import check_position
from excise.edit.rome import DELETION_OBJECTIVE, OBJECTIVES
from excise.facts import Fact
from excise.generation import generated_sample
from excise.scoring import recalled

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteConfig:
    layer: int | None = None          # None: the context's layer, else the site the causal trace points to
    position: str | None = None       # None: the traced one, or "subject_last" (ROME's) when a layer is given
    objective: str = DELETION_OBJECTIVE   # excise.edit.rome.OBJECTIVES
    seed: int = 0                     # the trace's noise, a generated sample, the watched facts' draw
    progress: bool = True
    # The damage watch: the share of other subjects' facts (a seeded sample of `watch` retain facts whose subject
    # is not being edited) still recalled, of those the model recalled before. Below `keep` it warns, or with
    # on_damage="stop" stops (rome: before the next fact, the ones done stay; memit/alphaedit: the batch is
    # undone and refused). Rank-one writes reach other subjects whose keys are close (the foreign Llama's MEMIT
    # over 20 facts kept 0.41, issue 36); 0.9 is the share the edit benchmarks hold edits to.
    keep: float = 0.9
    on_damage: str = "warn"
    watch: int = 100

    def __post_init__(self) -> None:
        if self.on_damage not in ("warn", "stop"):
            raise ValueError(f"on_damage must be 'warn' or 'stop', got {self.on_damage!r}")
        if not 0 <= self.keep <= 1:
            raise ValueError(f"keep is a share of facts, in [0, 1], got {self.keep}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if self.position is not None:
            object.__setattr__(self, "position", check_position(self.position))


@dataclass(frozen=True)
class BatchSiteConfig(SiteConfig):
    # MEMIT's range: with a traced site, the batch is spread over the traced layer and its neighbours whose MLPs
    # restore at least this share of what the traced layer restores (EditSite.supported); None: the traced layer
    # alone. MEMIT 20 facts on the foreign models (3 seeds of facts, benchmarks/results/spread.md): see there.
    spread: float | None = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.spread is not None and not 0 < self.spread <= 1:
            raise ValueError(f"spread is a share of the traced layer's restoration, in (0, 1], got {self.spread}")


@dataclass(frozen=True)
class Site:
    layer: int
    position: str
    sample: list[str]
    meta: dict[str, Any]
    layers: tuple[int, ...] = ()      # the layers a batch edit spreads over (the traced layer's range), else (layer,)

    def __post_init__(self) -> None:
        if not self.layers:
            object.__setattr__(self, "layers", (self.layer,))


def site(model: Any, facts: list[Fact], context: KnowledgeContext, config: SiteConfig, name: str,
         spread: float | None = None) -> Site:
    """The (layer, position) to edit and the covariance sample, each from the config, the context, or derived.

    With no layer anywhere, each fact is traced (`excise.locate.edit_site`, one MLP trace per fact) and the
    edit goes where it points: the prompt's last token at its MLP peak in the late layers when the trace
    says the answer is restored there, else the last subject token. Without a sample, texts the model
    writes itself (`generated_sample`, announced). `meta` says where each came from. With `spread` and a
    traced site, `layers` is the traced layer's range (`EditSite.supported(spread)`); else the one layer.
    """
    position = config.position
    traced = None
    if config.layer is not None:
        layer, layer_note = config.layer, "given"
    elif context.layer is not None:
        layer, layer_note = context.layer, context.notes.get("layer", "given")
    else:
        from excise.locate.site import edit_site

        traced = edit_site(model, facts, seed=config.seed)
        layer, layer_note = traced.layer, f"traced: {traced.reason}"
        if position is not None and position != traced.position:
            raise ValueError(f"position={position!r} was given without a layer, and the trace picks "
                             f"{traced.position} ({traced.summary()}); pass layer= with the position to edit "
                             "elsewhere")
        position = traced.position
        log.info("%s: %s", name, traced.summary())
    position = position or "subject_last"
    sample = context.sample
    if not sample:
        sample = generated_sample(model, seed=config.seed)
        log.warning("%s: no covariance sample given; using %d texts the model wrote itself "
                    "(excise.edit.generated_sample, seed %d)", name, len(sample), config.seed)
    meta: dict[str, Any] = {"context": {"layer": layer_note, "position": position,
                                        "sample": context.notes.get("sample", "derived: generated_sample")}}
    layers = (layer,)
    if traced is not None:
        meta["site"] = traced.to_dict()
        if spread is not None:
            layers = traced.supported(spread)
            meta["context"]["layers"] = (f"layers {list(layers)}: the traced layer and its neighbours that restore at "
                                         f"least {spread:.0%} of its share (spread={spread})")
    return Site(layer, position, list(sample), meta, layers)


class DamageWatch:
    """Other subjects' facts the model recalls before an edit, re-checked as the edit goes (see SiteConfig.keep)."""

    def __init__(self, model: Any, facts: list[Fact], context: KnowledgeContext, config: SiteConfig, name: str):
        editing = {f.subject for f in facts}
        others = [f for f in context.retain if f.subject not in editing]
        sample = random.Random(config.seed).sample(others, min(config.watch, len(others)))
        before = recalled(model, sample)
        self.facts = [f for f, r in zip(sample, before, strict=True) if r]
        self.config, self.name, self.n = config, name, len(facts)
        self.history: list[dict[str, Any]] = []
        self.warned = False

    def check(self, model: Any, done: int) -> bool:
        """Measure after `done` of the facts; warn once below `keep`. Returns True when the edit should stop."""
        if not self.facts:
            return False
        kept = sum(recalled(model, self.facts)) / len(self.facts)
        self.history.append({"facts_edited": done, "others_kept": kept})
        if kept >= self.config.keep:
            return False
        if not self.warned:
            self.warned = True
            warnings.warn(f"{self.name}: after {done} of {self.n} facts, other subjects' facts kept {kept:.2f} "
                          f"({len(self.facts)} retain facts of other subjects the model recalled before), below "
                          f"keep={self.config.keep}: the write reaches facts it should not. Edit fewer facts at a "
                          "time or at another layer, or pass on_damage='stop' to stop there", stacklevel=3)
        return self.config.on_damage == "stop"

    def settle(self, model: Any, record: Any, meta: dict[str, Any]) -> Any:
        """After a batch edit (memit, alphaedit): check once; under on_damage='stop' undo the batch and refuse it,
        else return the record with `meta` and the watch's."""
        if self.check(model, self.n):
            record.undo()
            raise ValueError(f"{self.name} undone: other subjects' facts kept {self.history[-1]['others_kept']:.2f} "
                             f"< keep={self.config.keep} (on_damage='stop'); edit fewer facts at a time or at "
                             "another layer")
        record.meta |= meta | {"damage": self.meta()}
        return record

    def meta(self) -> dict[str, Any]:
        if not self.facts:
            return {"not_measured": "no retain facts of other subjects that the model recalled (pass retain=)"}
        return {"watched_facts": len(self.facts), "keep": self.config.keep, "history": self.history,
                "others_kept": self.history[-1]["others_kept"] if self.history else None}
