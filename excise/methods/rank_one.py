"""What rome, memit and alphaedit share: where to write (layer and position) and the covariance sample."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from excise.context import KnowledgeContext
from excise.edit.rank_one import check_position
from excise.edit.rome import DELETION_OBJECTIVE, OBJECTIVES
from excise.facts import Fact
from excise.generation import generated_sample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteConfig:
    layer: int | None = None          # None: the context's layer, else the site the causal trace points to
    position: str | None = None       # None: the traced one, or "subject_last" (ROME's) when a layer is given
    objective: str = DELETION_OBJECTIVE   # excise.edit.rome.OBJECTIVES
    seed: int = 0                     # the trace's noise and a generated sample
    progress: bool = True

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if self.position is not None:
            object.__setattr__(self, "position", check_position(self.position))


@dataclass(frozen=True)
class Site:
    layer: int
    position: str
    sample: list[str]
    meta: dict[str, Any]


def site(model: Any, facts: list[Fact], context: KnowledgeContext, config: SiteConfig, name: str) -> Site:
    """The (layer, position) to edit and the covariance sample, each from the config, the context, or derived.

    With no layer anywhere, each fact is traced (`excise.locate.edit_site`, one MLP trace per fact) and the
    edit goes where it points: the prompt's last token at its MLP peak in the late layers when the trace
    says the answer is restored there, else the last subject token. Without a sample, texts the model
    writes itself (`generated_sample`, announced). `meta` says where each came from.
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
    if traced is not None:
        meta["site"] = traced.to_dict()
    return Site(layer, position, list(sample), meta)
