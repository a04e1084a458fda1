"""Named plug-ins of one kind: deletion methods, audit attacks, named models.

    METHODS = Registry("deletion method")
    METHODS.register(my_method)              # from a notebook too; no excise file changes
    METHODS.get("npo"); METHODS.names(); "npo" in METHODS

A name is registered once: registering another item under a taken name is
refused unless `replace=True` (a notebook re-running its cell). An unknown
name is refused with the list of known ones. Items are kept in registration
order, which is the order tables and help list them in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Items of one kind under unique names (`item.name` unless `key` says otherwise)."""

    def __init__(self, kind: str, key: Callable[[T], str] = lambda item: item.name) -> None:  # type: ignore[attr-defined]
        self.kind = kind
        self._key = key
        self._items: dict[str, T] = {}

    def register(self, item: T, *, replace: bool = False) -> T:
        name = self._key(item)
        if not isinstance(name, str) or not name or name != name.strip() or "," in name:
            raise ValueError(f"a {self.kind} needs a non-empty name without commas or outer spaces, got {name!r}")
        if name in self._items and self._items[name] is not item and not replace:
            raise ValueError(f"a {self.kind} named {name!r} is already registered; pick another name, or pass "
                             "replace=True to replace it")
        self._items[name] = item
        return item

    def unregister(self, name: str) -> T:
        return self._items.pop(self.check(name))

    def check(self, name: str) -> str:
        """`name` if registered, else a ValueError that lists the known names."""
        if name not in self._items:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._items) or '(none)'}")
        return name

    def get(self, name: str) -> T:
        return self._items[self.check(name)]

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._items)})"
