"""Component: one addressable place in a transformer.

`Component(layer=5, kind="neuron", index=1732)` is MLP neuron 1732 of block 5;
`Component(layer=3, kind="head", index=2, position=7)` is head 2 of block 3 at
token position 7. A component knows the TransformerLens hook where its
activation lives and checks itself against a model's shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KINDS = ("resid", "mlp", "attn", "head", "neuron")
INDEXED_KINDS = ("head", "neuron")

# The activation each kind reads or patches, as a TransformerLens hook name (plus "resid_pre", the residual
# stream entering the block, which no Component addresses). Every hook name excise builds comes from here.
HOOKS = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",  # the residual stream entering the block
    "resid": "blocks.{layer}.hook_resid_post",   # the residual stream after the block
    "mlp": "blocks.{layer}.hook_mlp_out",        # the MLP's output (before the residual add)
    "attn": "blocks.{layer}.hook_attn_out",      # the attention output (all heads summed)
    "head": "blocks.{layer}.attn.hook_z",        # [batch, pos, head, d_head] before W_O
    "neuron": "blocks.{layer}.mlp.hook_post",    # [batch, pos, d_mlp] after the nonlinearity
}


def hook_name(kind: str, layer: int | str) -> str:
    """Returns the TransformerLens hook name of `kind`'s activation in block `layer` (see HOOKS). Cost: none."""
    if kind not in HOOKS:
        raise ValueError(f"no hook for kind {kind!r}; kinds with a hook: {', '.join(HOOKS)}")
    return HOOKS[kind].format(layer=layer)


def forward_keeping(model: Any, tokens: Any, names: list[str] | set[str]) -> tuple[Any, dict[str, Any]]:
    """One forward of `model` on `tokens` keeping the activations at the hooks `names`, by the names asked
    (an alias's `hook.name` is the canonical one); returns (logits, {name: activation}). The activations keep
    their graph: the caller decides on no_grad, detach or clone. Raises if a hook never fired."""
    kept: dict[str, Any] = {}

    def keeper(name: str):
        def keep(act, hook):
            kept[name] = act
        return keep

    with model.hooks(fwd_hooks=[(n, keeper(n)) for n in sorted(names)]):
        logits = model(tokens)
    missing = set(names) - set(kept)
    if missing:
        raise RuntimeError(f"hooks never fired during the forward: {sorted(missing)}")
    return logits, kept


def stream_hook(index: int) -> str:
    """Returns the hook holding Hugging Face's hidden_states[index]: 0 the embeddings entering block 0, i the
    residual stream after block i-1. Cost: none."""
    return hook_name("resid_pre", 0) if index == 0 else hook_name("resid", index - 1)


@dataclass(frozen=True, order=True)
class Component:
    """One place in the model: a layer, a kind and, for heads and neurons, an index."""

    layer: int
    kind: str
    index: int | None = None
    position: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown component kind {self.kind!r}; choose one of {KINDS}")
        if not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"layer must be a non-negative int, got {self.layer!r}")
        if self.kind in INDEXED_KINDS:
            if not isinstance(self.index, int) or self.index < 0:
                raise ValueError(
                    f"a {self.kind} component needs index= (which {self.kind}), a "
                    f"non-negative int; got {self.index!r}"
                )
        elif self.index is not None:
            raise ValueError(
                f"a {self.kind} component has no index (got index={self.index}); "
                "use kind='head' or kind='neuron' to address a part of a layer"
            )
        if self.position is not None and (not isinstance(self.position, int) or self.position < 0):
            raise ValueError(f"position must be a non-negative int or None, got {self.position!r}")

    @property
    def hook_name(self) -> str:
        return hook_name(self.kind, self.layer)

    def check(self, model: Any) -> Component:
        """Raise a clear ValueError if this component does not exist in `model`."""
        cfg = model.cfg
        if self.layer >= cfg.n_layers:
            raise ValueError(
                f"{self} is out of range: the model has {cfg.n_layers} layers "
                f"(0..{cfg.n_layers - 1})"
            )
        size = {"head": cfg.n_heads, "neuron": cfg.d_mlp}.get(self.kind)
        if size is not None and self.index >= size:
            raise ValueError(
                f"{self} is out of range: layer {self.layer} has {size} {self.kind}s "
                f"(0..{size - 1})"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in
                (("layer", self.layer), ("kind", self.kind), ("index", self.index),
                 ("position", self.position)) if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Component:
        return cls(**d)

    def weight_slices(self, model: Any) -> list[tuple[Any, bool, tuple]]:
        """The weights this component owns (see OWNERSHIP): (LinearView, is_bias, index) per owned block,
        the index into the view's canonical [d_in, d_out] weight (or into its bias). The one map
        behind parameter masks, and read in reverse by `unit_sums` (Fisher scores, EditRecord.touched)."""
        from excise.weights import has_linear, linear

        if self.kind == "resid":
            raise ValueError(f"{self} owns no weights; use neurons, heads, mlp or attn components")
        self.check(model)
        family = "neuron" if self.kind in ("neuron", "mlp") else "head"
        out: list[tuple[Any, bool, tuple]] = []
        for name, (unit, axis, bias_owner) in OWNERSHIP.items():
            if unit != family or not has_linear(model, name):
                continue
            view = linear(model, self.layer, name)
            n, block = units(model.cfg, name)
            if self.kind in ("mlp", "attn"):
                along = slice(None)
            else:
                u = self.index if n == (model.cfg.d_mlp if unit == "neuron" else model.cfg.n_heads) \
                    else kv_head(model.cfg, self.index)
                along = slice(u * block, (u + 1) * block)
            out.append((view, False, (slice(None), along) if axis == 1 else (along, slice(None))))
            if view.bias is not None and bias_owner in ("unit", self.kind):
                out.append((view, True, (along,) if bias_owner == "unit" else (slice(None),)))
        return out

    def __str__(self) -> str:
        s = f"L{self.layer}.{self.kind}"
        if self.index is not None:
            s += f"[{self.index}]"
        if self.position is not None:
            s += f"@{self.position}"
        return s

    def __repr__(self) -> str:
        return f"Component({self})"


# Which weights a component owns, per linear map of a block (`excise.weights.linear` names): the unit kind,
# the axis of the canonical [d_in, d_out] weight its units run along (1: columns, the input side; 0: rows,
# the output side) and who owns the bias ("unit": one block per unit; "mlp" / "attn": the whole layer).
# A neuron owns its W_in (and W_gate) column, b_in entry and W_out row; a head its Q, K, V column blocks
# and bias blocks (a key/value head is shared by its query-head group) and its W_O row block; `mlp` / `attn`
# own all of their layer's, output biases included.
OWNERSHIP: dict[str, tuple[str, int, str]] = {
    "mlp.in": ("neuron", 1, "unit"), "mlp.gate": ("neuron", 1, "unit"), "mlp.out": ("neuron", 0, "mlp"),
    "attn.q": ("head", 1, "unit"), "attn.k": ("head", 1, "unit"), "attn.v": ("head", 1, "unit"),
    "attn.o": ("head", 0, "attn"),
}
OUTPUT_LINEAR = {unit: name for name, (unit, axis, _) in OWNERSHIP.items() if axis == 0}   # what ablation zeroes


def units(cfg: Any, name: str) -> tuple[int, int]:
    """(units, entries per unit along the unit axis) of linear `name`: d_mlp neurons of one entry, or
    heads of d_head entries (attn.k / attn.v: the key/value heads)."""
    unit = OWNERSHIP[name][0]
    if unit == "neuron":
        return cfg.d_mlp, 1
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    return (n_kv if name in ("attn.k", "attn.v") else cfg.n_heads), cfg.d_head


def unit_sums(cfg: Any, name: str, values: Any, is_bias: bool) -> Any:
    """`values` shaped like linear `name`'s canonical weight (or its bias), summed onto the units that own
    them (OWNERSHIP): [d_mlp] for MLP linears, [n_heads] query heads for attention (a key/value head's
    sum goes to each head of its group). The reverse of `Component.weight_slices`."""
    unit, axis, _ = OWNERSHIP[name]
    n, block = units(cfg, name)
    per = (values if is_bias else values.sum(1 - axis)).reshape(n, block).sum(-1)
    return per.repeat_interleave(cfg.n_heads // n) if unit == "head" and n != cfg.n_heads else per


def kv_head(cfg: Any, head: int) -> int:
    """The key/value head that query head `head` reads under grouped-query attention.

    With n_heads query heads and n_key_value_heads key/value heads, query head
    h shares the key/value head h // (n_heads / n_key_value_heads) with the
    other query heads of its group. Without GQA every head has its own: h.
    Head scores in excise are per *query* head (hook_z, before W_O); a change
    to a key/value head's weights touches every query head of its group.
    """
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    return head // (cfg.n_heads // n_kv)


def head_axis(cfg: Any) -> dict[str, Any]:
    """What a Localization's head index means, stored in its meta."""
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    out: dict[str, Any] = {"head_index": "query head", "n_key_value_heads": n_kv}
    if n_kv != cfg.n_heads:
        out["kv_head_of_query_head"] = [kv_head(cfg, h) for h in range(cfg.n_heads)]
    return out
