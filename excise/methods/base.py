"""What a deletion method is, and the one registry every name is looked up in.

A method is an object with a name, a one-line summary, a frozen config
dataclass whose field comments say where each default comes from, and

    run(model, facts, context, config, mask) -> EditRecord

`context` is a `KnowledgeContext` (retain facts, stand-ins, covariance
sample, layer: whatever the method reads, listed in `reads`/`requires`);
`mask` the located components it is confined to (None: the method's own
choice, every parameter for gradient methods). A user's method registers
from a notebook with `excise.methods.register(MyMethod())` and is then
reachable by name in `delete`, `excise edit --method` and the benches.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from typing import Any, ClassVar

from excise.components import Component
from excise.context import KnowledgeContext
from excise.facts import Fact
from excise.registry import Registry

MASKS = ("none", "optional", "required")


class Method:
    """A deletion method. Subclass it, set the class attributes, implement `run`, register an instance."""

    name: ClassVar[str]
    summary: ClassVar[str]                  # one line: `excise edit --help`, the README's method table
    label: ClassVar[str] = ""               # its name in tables and plots (default: the name)
    Config: ClassVar[type]                  # a frozen dataclass; `configure` builds it
    # how located components confine it: "none" (it picks its own parameters: a layer, every parameter),
    # "optional" (confined to the top located neurons when given, every parameter otherwise), "required"
    mask: ClassVar[str] = "none"
    requires: ClassVar[tuple[str, ...]] = ()   # context fields it cannot run without (e.g. "retain")
    reads: ClassVar[tuple[str, ...]] = ()      # context fields it reads when present (e.g. "sample", "layer")
    source: ClassVar[str] = ""                 # the paper and the reference code it follows
    # edits the model's weights in place and returns an EditRecord (False: e.g. sisa, whose model is an ensemble
    # and whose record is what it retrained; benches that copy a network and diff its weights skip it)
    in_place: ClassVar[bool] = True

    def configure(self, **overrides: Any) -> Any:
        """The method's config with its defaults, then `overrides` (only fields the config has)."""
        fields = {f.name for f in dataclasses.fields(self.Config)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"{self.name} has no option {', '.join(map(repr, unknown))}; its options are "
                             f"{', '.join(sorted(fields))}")
        return self.Config(**overrides)

    def configure_run(self, seed: int = 0, progress: bool = True, **overrides: Any) -> Any:
        """The config with `seed` and `progress` set where it has those fields (a user's config may not), then
        `overrides`."""
        fields = {f.name for f in dataclasses.fields(self.Config)}
        common = {k: v for k, v in {"seed": seed, "progress": progress}.items() if k in fields}
        return self.configure(**common | overrides)

    def run(self, model: Any, facts: list[Fact], context: KnowledgeContext, config: Any,
            mask: Sequence[Component] | None) -> Any:
        """Delete `facts` from `model`; returns the EditRecord (a method that does not edit in place: its record)."""
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """Each config field and its default (a field without one maps to dataclasses.MISSING)."""
        return {f.name: f.default if f.default is not dataclasses.MISSING else
                (f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
                for f in dataclasses.fields(self.Config)}

    def __init__(self) -> None:
        if not type(self).label:
            self.label = self.name

    def __repr__(self) -> str:
        return f"<deletion method {self.name!r}: {self.summary}>"


METHODS: Registry[Method] = Registry("deletion method")


def register(method: Method, replace: bool = False) -> Method:
    """Make `method` reachable by its name (`delete`, `excise edit --method`, the benches); returns it.
    Cost: none."""
    if not isinstance(method, Method):
        raise TypeError(f"register takes a Method instance (a subclass of excise.methods.Method), got {method!r}")
    for attr in ("name", "summary", "Config"):
        if not hasattr(method, attr):
            raise ValueError(f"a deletion method needs a class attribute {attr!r}")
    if not dataclasses.is_dataclass(method.Config):
        raise ValueError(f"{method.name}: Config must be a dataclass, got {method.Config!r}")
    if method.mask not in MASKS:
        raise ValueError(f"{method.name}: mask must be one of {MASKS}, got {method.mask!r}")
    return METHODS.register(method, replace=replace)


def get(name: str) -> Method:
    """Returns the method registered as `name` (an unknown name: a ValueError listing the known ones). Cost: none."""
    return METHODS.get(name)


def parse_option(method: Method, text: str) -> tuple[str, Any]:
    """Returns (KEY, value) for `KEY=VALUE`: the method's config field KEY, the value cast to the field's type
    (CLI --option). Cost: none."""
    key, sep, value = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep:
        raise ValueError(f"--option takes KEY=VALUE, got {text!r}")
    hints = typing.get_type_hints(method.Config)
    if key not in hints:
        raise ValueError(f"{method.name} has no option {key!r}; its options are {', '.join(sorted(hints))}")
    return key, _cast(hints[key], value.strip(), f"{method.name} option {key}")


def _cast(hint: Any, value: str, what: str) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value.lower() == "none":
            return None
        return _cast(args[0], value, what)
    if typing.get_origin(hint) is tuple:
        inner = args[0] if args else str
        return tuple(_cast(inner, v.strip(), what) for v in value.split(",") if v.strip())
    try:
        if hint is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if hint in (int, float, str):
            return hint(value)
    except ValueError:
        raise ValueError(f"{what} takes a {hint.__name__}, got {value!r}") from None
    raise ValueError(f"{what} cannot be set from the command line (type {hint}); set it in Python")
