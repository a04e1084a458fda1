"""EditRecord: every weight change excise makes, diffable, savable, undoable.

An edit runs inside `recording(model, ...)`: it snapshots the parameters the
edit may touch, and when the edit returns it diffs them bit for bit and keeps,
for each changed parameter, the flat indices of the changed elements and their
values before and after. On an exception the snapshot is written back before
the exception propagates, so a model is never left half-edited.

Parameters that share storage (TransformerBridge's q/k/v are strided views of
GPT-2's fused qkv matrix) are recorded once, under the parameter that owns
the storage; `touched()` maps changes back onto Components through the same
views, so it reports what was changed, not what the method says it changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from excise.components import OWNERSHIP, Component, unit_sums
from excise.facts import Fact
from excise.weights import LINEARS, has_linear, linear

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


def storage_owners(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Parameters by name, one per storage: the largest parameter over each storage."""
    best: dict[int, tuple[str, torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        key = p.untyped_storage().data_ptr()
        if key not in best or p.numel() > best[key][1].numel():
            best[key] = (name, p)
    return {name: p for name, p in sorted(best.values(), key=lambda item: item[0])}


def architecture_signature(model: torch.nn.Module) -> str:
    """Hash of every parameter's name, shape and dtype: same architecture, same signature."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype};".encode())
    return h.hexdigest()[:16]


def _tensor_hash(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()[:16]


@dataclass
class ParamChange:
    """The changed elements of one parameter: flat indices and their values."""

    name: str
    shape: tuple[int, ...]
    index: torch.Tensor          # int64 flat indices of the changed elements
    before: torch.Tensor         # values at those indices before the edit
    after: torch.Tensor          # ... and after

    @property
    def n_changed(self) -> int:
        return int(self.index.numel())


@dataclass
class EditRecord:
    """What an edit changed. `undo()` / `apply()` write the before / after values bit for bit."""

    method: str
    hyper: dict[str, Any]
    facts: list[dict[str, Any]]
    changes: list[ParamChange]
    architecture: str
    before_hash: str
    after_hash: str
    model: torch.nn.Module | None = field(default=None, repr=False, compare=False)
    meta: dict[str, Any] = field(default_factory=dict)
    _original: torch.nn.Module | None = field(default=None, repr=False, compare=False)

    # -- applying ---------------------------------------------------------
    def _params(self, model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        if architecture_signature(model) != self.architecture:
            raise ValueError(
                f"this {self.method} record was made on a different architecture (parameter "
                "names/shapes differ); load the model it was made on"
            )
        params = dict(model.named_parameters())
        return {c.name: params[c.name] for c in self.changes}

    def _state_hash(self, params: dict[str, torch.nn.Parameter]) -> str:
        h = hashlib.sha256()
        for c in self.changes:
            h.update(_tensor_hash(params[c.name].detach().reshape(-1)[c.index]).encode())
        return h.hexdigest()[:16]

    def _write(self, model: torch.nn.Module | None, side: str, expect: str, force: bool) -> torch.nn.Module:
        model = model if model is not None else self.model
        if model is None:
            raise ValueError("pass the model: this record was loaded from disk and is not bound to one")
        params = self._params(model)
        state = self._state_hash(params)
        if state != expect and not force:
            other = self.before_hash if side == "after" else self.after_hash
            if state == other:
                return model                      # already in the requested state
            want = "unedited" if side == "after" else "edited"
            raise ValueError(
                f"the model's weights at this {self.method} record's indices are not the "
                f"{want} values the record expects (a different model, or other edits since); "
                "undo the later edits first, or pass force=True"
            )
        with torch.no_grad():
            for c in self.changes:
                flat = params[c.name].detach().view(-1) if params[c.name].is_contiguous() else None
                values = getattr(c, side).to(params[c.name].device, params[c.name].dtype)
                if flat is not None:
                    flat[c.index.to(flat.device)] = values
                else:
                    data = params[c.name].detach().reshape(-1).clone()
                    data[c.index.to(data.device)] = values
                    params[c.name].copy_(data.view(params[c.name].shape))
        return model

    def undo(self, model: torch.nn.Module | None = None, force: bool = False) -> torch.nn.Module:
        """Write the before values back (bit for bit)."""
        return self._write(model, "before", self.after_hash, force)

    def apply(self, model: torch.nn.Module | None = None, force: bool = False) -> torch.nn.Module:
        """Write the after values (bit for bit); refused unless the model is in the before state."""
        return self._write(model, "after", self.before_hash, force)

    def original(self, model: torch.nn.Module | None = None) -> torch.nn.Module:
        """A copy of the model as it was before this edit: the reference for an audit.

        Made on first call (one copy of the weights) and kept; the model
        itself is not touched.
        """
        from excise.weights import copy_model

        if self._original is None:
            model = model if model is not None else self.model
            if model is None:
                raise ValueError("pass the model: this record was loaded from disk and is not bound to one")
            self._original = self.undo(copy_model(model))
        return self._original

    # -- inspecting -------------------------------------------------------
    @property
    def n_changed(self) -> int:
        return sum(c.n_changed for c in self.changes)

    def parameters_touched(self) -> dict[str, int]:
        return {c.name: c.n_changed for c in self.changes}

    def touched(self, model: torch.nn.Module | None = None) -> list[Component]:
        """Components whose weights differ, found by diffing (see module docstring).

        Neurons: a changed W_in / W_gate column, W_out row or b_in entry;
        heads: a changed Q/K/V column block, W_O row block or Q/K/V bias block;
        `mlp` / `attn`: a changed output bias. Other parameters (embeddings,
        norms) are listed by `parameters_touched()`.
        """
        model = model if model is not None else self.model
        if model is None:
            raise ValueError("pass the model to map changes onto its components")
        owners = storage_owners(model)
        masks = {}
        for c in self.changes:
            m = torch.zeros(int(torch.tensor(c.shape).prod()), dtype=torch.bool)
            m[c.index] = True
            masks[c.name] = m
        by_storage = {owners[n].untyped_storage().data_ptr(): n for n in masks}
        cfg = model.cfg
        out: set[Component] = set()
        for layer in range(cfg.n_layers):
            for name in LINEARS:
                if not has_linear(model, name):
                    continue
                view = linear(model, layer, name)
                for tensor, is_bias in ((view.weight, False), (view.bias, True)):
                    if tensor is None:
                        continue
                    owner = by_storage.get(tensor.untyped_storage().data_ptr())
                    if owner is None:
                        continue
                    base = owners[owner]
                    mask = torch.as_strided(masks[owner], tensor.size(), tensor.stride(),
                                            tensor.storage_offset() - base.storage_offset())
                    if not mask.any():
                        continue
                    if not is_bias:
                        mask = view.canonical(mask)
                    out |= _components(cfg, layer, name, mask, is_bias)
        return sorted(out)

    def summary(self) -> str:
        lines = [f"{self.method}: {self.n_changed} weights changed in {len(self.changes)} parameter(s)"]
        lines += [f"  {c.name.replace('._original_component', '')}: {c.n_changed} of {int(torch.tensor(c.shape).prod())}"
                  for c in self.changes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """The notebook view: what changed (per parameter: count, share, largest change), the config, the facts."""
        from excise import display as d

        params = []
        for c in self.changes:
            total = int(torch.tensor(c.shape).prod())
            delta = (c.after.float() - c.before.float()).abs()
            params.append([c.name.replace("._original_component", ""), "x".join(map(str, c.shape)), c.n_changed,
                           c.n_changed / total, float(delta.max()) if delta.numel() else 0.0])
        hyper = [[k, d.value(v)] for k, v in self.hyper.items()]
        meta = [[k, d.value(v)] for k, v in self.meta.items()]
        facts = [[f.get("subject"), f.get("relation"), f.get("target")] for f in self.facts]
        parts = [d.heading(f"{self.method}: {self.n_changed} weights changed in {len(self.changes)} parameter(s), "
                           f"{len(self.facts)} fact(s)"),
                 d.table(["parameter", "shape", "changed", "share", "max |change|"], params,
                         caption="what changed")]
        right = (d.table(["note", "value"], meta, caption="meta", numbers="left", max_rows=1000) if meta else "") + \
            (d.table(["subject", "relation", "target"], facts, caption="facts") if facts else "")
        parts.append(d.side_by_side(
            [p for p in (d.table(["setting", "value"], hyper, caption="config", numbers="left", max_rows=1000)
                         if hyper else "", right) if p]))
        parts.append("<p>record.undo() restores the weights bit for bit; record.touched() lists the components</p>")
        return "".join(parts)

    def __repr__(self) -> str:
        return (f"EditRecord({self.method}, {len(self.facts)} fact(s), {self.n_changed} weights in "
                f"{len(self.changes)} parameter(s))")

    # -- persistence ------------------------------------------------------
    def save(self, path: str | Path) -> None:
        tensors = {}
        for i, c in enumerate(self.changes):
            tensors[f"{i}.index"] = c.index.contiguous()
            tensors[f"{i}.before"] = c.before.contiguous()
            tensors[f"{i}.after"] = c.after.contiguous()
        header = {"format": FORMAT_VERSION, "method": self.method, "hyper": self.hyper,
                  "facts": self.facts, "architecture": self.architecture,
                  "before_hash": self.before_hash, "after_hash": self.after_hash, "meta": self.meta,
                  "changes": [{"name": c.name, "shape": list(c.shape)} for c in self.changes]}
        save_file(tensors, str(path), metadata={"excise": json.dumps(header, default=str)})

    @classmethod
    def load(cls, path: str | Path, model: torch.nn.Module | None = None) -> EditRecord:
        """Read a saved record; with `model`, check it fits and bind it."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("excise")
        if raw is None:
            raise ValueError(f"{path} is a safetensors file but not an excise EditRecord")
        header = json.loads(raw)
        tensors = load_file(str(path))
        changes = [ParamChange(c["name"], tuple(c["shape"]), tensors[f"{i}.index"],
                               tensors[f"{i}.before"], tensors[f"{i}.after"])
                   for i, c in enumerate(header["changes"])]
        record = cls(header["method"], header["hyper"], header["facts"], changes,
                     header["architecture"], header["before_hash"], header["after_hash"],
                     meta=header.get("meta", {}))
        if model is not None:
            params = record._params(model)      # refuses another architecture
            state = record._state_hash(params)
            if state not in (record.before_hash, record.after_hash):
                raise ValueError(
                    f"{path} was made on another model: at its indices this model holds neither "
                    "the record's before nor its after values"
                )
            record.model = model
        return record


def _components(cfg: Any, layer: int, name: str, mask: torch.Tensor, is_bias: bool) -> set[Component]:
    """The components owning the changed entries `mask` of linear `name` (its canonical weight or bias),
    by `excise.components.OWNERSHIP`, the map parameter masks are built from."""
    unit, _, bias_owner = OWNERSHIP[name]
    if is_bias and bias_owner != "unit":
        return {Component(layer, bias_owner)}
    hit = unit_sums(cfg, name, mask.to(torch.int64), is_bias) > 0
    return {Component(layer, unit, int(i)) for i in hit.nonzero().flatten()}


@contextmanager
def recording(
    model: torch.nn.Module, method: str, hyper: dict[str, Any] | None = None,
    facts: Iterable[Fact] = (), scope: Sequence[torch.nn.Parameter] | None = None,
) -> Iterator[dict[str, Any]]:
    """Run an edit; yields a dict whose "record" is filled with the EditRecord on success.

    Cost: one copy of the scoped parameters (the snapshot), a hash of every
    parameter outside the scope, and a bitwise diff of the scope on exit.

    `scope`: the parameters the edit may change (default: all). Only they are
    snapshotted; the others are hashed, and a change outside the scope is an
    error (the scope is restored first). On any exception the snapshot is
    written back before the exception propagates.
    """
    owners = storage_owners(model)
    if scope is None:
        watched = owners
    else:
        ptrs = {p.untyped_storage().data_ptr() for p in scope}
        watched = {n: p for n, p in owners.items() if p.untyped_storage().data_ptr() in ptrs}
        if not watched:
            raise ValueError("the edit's scope names no parameter of this model")
    outside = {n: _tensor_hash(p) for n, p in owners.items() if n not in watched} if scope is not None else {}
    snapshot = {n: p.detach().clone() for n, p in watched.items()}
    box: dict[str, Any] = {"record": None}

    def restore() -> None:
        with torch.no_grad():
            for n, p in watched.items():
                p.copy_(snapshot[n])

    try:
        yield box
        moved = [n for n, h in outside.items() if _tensor_hash(owners[n]) != h]
        if moved:
            raise RuntimeError(f"edit {method!r} changed parameters outside its declared scope: {moved[:3]}")
    except BaseException:
        restore()
        raise
    changes = []
    for n, p in watched.items():
        before = snapshot[n].reshape(-1)
        after = p.detach().reshape(-1)
        diff = (before.view(torch.uint8 if before.dtype.itemsize == 1 else _int_dtype(before)) !=
                after.view(torch.uint8 if after.dtype.itemsize == 1 else _int_dtype(after)))
        index = diff.nonzero().flatten().cpu()
        if index.numel():
            changes.append(ParamChange(n, tuple(p.shape), index, before[index].cpu().clone(),
                                       after[index].cpu().clone()))
    if not changes:
        log.warning("edit %s changed no weight", method)
    record = EditRecord(method, dict(hyper or {}), [f.to_dict() | {"neighbors": []} for f in facts],
                        changes, architecture_signature(model), "", "", model=model)
    params = dict(model.named_parameters())
    record.after_hash = record._state_hash(params)
    record.before_hash = hashlib.sha256(
        "".join(_tensor_hash(c.before) for c in changes).encode()).hexdigest()[:16]
    box["record"] = record


def _int_dtype(t: torch.Tensor) -> torch.dtype:
    """Same-width integer dtype: comparing bit patterns, so -0.0 != 0.0 and NaN == NaN."""
    return {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.dtype.itemsize]
