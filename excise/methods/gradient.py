"""Gradient methods: one shared loop (`excise.edit.unlearn_with`), each method its forget term.

    record = excise.methods.unlearn(model, forget, retain, "npo", mask=components, seed=0)

A gradient method is a `Method` and a `ForgetLoss` at once: its config
extends `UnlearnConfig` (steps, lr, batch size, retain weight, ...) with its
own fields, and `forget_loss` is the only computation it adds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

from excise.components import Component
from excise.context import KnowledgeContext
from excise.edit.record import EditRecord
from excise.edit.unlearn import ForgetLoss, UnlearnConfig, unlearn_with
from excise.facts import Fact
from excise.methods.base import METHODS, Method


class GradientMethod(Method, ForgetLoss):
    """A deletion method that is a forget term in the shared unlearning loop."""

    Config: ClassVar[type] = UnlearnConfig
    mask = "optional"
    requires: ClassVar[tuple[str, ...]] = ("retain",)

    def run(self, model: Any, facts: list[Fact], context: KnowledgeContext, config: Any,
            mask: Sequence[Component] | None) -> EditRecord:
        return unlearn_with(model, self, facts, context.retain, config, mask=mask, stand_ins=context.stand_ins)


def unlearn(model: Any, forget: Iterable[Fact], retain: Iterable[Fact] = (), method: str = "npo", *,
            mask: Sequence[Component] | None = None, config: Any = None, stand_ins: Sequence[str] | None = None,
            stop: Callable[[Any], bool] | None = None, **overrides: Any) -> EditRecord:
    """Unlearn `forget` with the gradient method `method`, changing only `mask` (None: every parameter).

    config: the method's config (default: its own defaults); `overrides` replace fields of it, e.g.
    `steps=50, seed=1, progress=False`. stand_ins: for `swap`, names the model never saw. stop: your own
    stopping rule, called with the model at every check (`eval_every` steps); True ends the run.
    """
    m = METHODS.get(method)
    if not isinstance(m, GradientMethod):
        raise ValueError(f"{method!r} is not a gradient method; gradient methods are "
                         f"{', '.join(x.name for x in METHODS if isinstance(x, GradientMethod))} "
                         "(excise.methods.delete runs any method)")
    if config is None:
        config = m.configure(**overrides)
    else:
        if not isinstance(config, m.Config):
            raise ValueError(f"{method} takes a {m.Config.__name__}, got a {type(config).__name__}")
        config = dataclasses.replace(config, **overrides)
    return unlearn_with(model, m, forget, retain, config, mask=mask, stand_ins=stand_ins, stop=stop)
