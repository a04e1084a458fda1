"""A model's weights seen the same way whatever its architecture, and the helpers every layer of excise uses.

- `linear(model, layer, "mlp.out")`: a block's linear map as `x @ W + b`, W [d_in, d_out], a view of the parameter;
- `device_of(model)`: where the model's parameters live;
- `fingerprint(model)`: a hash of the weights (keys caches, refuses an edit on another model);
  `model_fingerprint(model)` the same, remembered until a weight changes;
- `copy_model(model)`: an independent copy that keeps the original's storage sharing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch


def device_of(model: Any) -> torch.device:
    """The device of the model's parameters (its first one: excise never splits a model across devices)."""
    return next(iter(model.parameters())).device


def fingerprint(model: torch.nn.Module) -> str:
    """A short hash of every parameter's name, shape, dtype and bytes.

    Keys caches and refuses applying an edit to a different model. Costs one
    pass over the weights.
    """
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode() + str(p.dtype).encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _state_key(model: Any) -> tuple:
    """What changes when a tensor of the model is written in place or replaced: each one's storage address and
    version counter (a write through `.data` bypasses the counter: excise writes weights in place, in no_grad)."""
    return tuple((id(t), t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))


def model_fingerprint(model: Any) -> str:
    """`excise.fingerprint(model)`, remembered on the model while no parameter or buffer changes (the full hash
    reads every weight: seconds on a 7B). Cost: a pass over the parameter list; the hash when one changed."""
    state = _state_key(model)
    kept = getattr(model, "_excise_fingerprint", None)
    if kept is not None and kept[0] == state:
        return kept[1]
    fp = fingerprint(model)
    object.__setattr__(model, "_excise_fingerprint", (state, fp))
    return fp


def copy_model(model: torch.nn.Module) -> torch.nn.Module:
    """An independent copy of `model` whose parameters keep the original's storage sharing.

    `copy.deepcopy` alone has two problems on a TransformerBridge: it fails
    after a forward with gradients (blocks keep a non-leaf attention pattern),
    and it clones a fused matrix (GPT-2's qkv) and its views (q, k, v) into
    unrelated tensors. Here non-leaf tensor attributes are detached for the
    copy, and in the copy every view is re-made as a view of the copied base.
    """
    import copy

    stash = []
    for module in model.modules():
        for key, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and value.requires_grad and not value.is_leaf:
                stash.append((module, key, value))
                setattr(module, key, value.detach())
    try:
        clone = copy.deepcopy(model)
    finally:
        for module, key, value in stash:
            setattr(module, key, value)
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(p.untyped_storage().data_ptr(), []).append(name)
    theirs = dict(model.named_parameters(remove_duplicate=False))
    ours = dict(clone.named_parameters(remove_duplicate=False))
    for names in groups.values():
        base = max(names, key=lambda n: theirs[n].numel())
        if len(names) == 1 or theirs[base].storage_offset() != 0 or not theirs[base].is_contiguous():
            continue
        for n in names:
            if n != base:
                t = theirs[n]
                ours[n].data = ours[base].data.as_strided(t.size(), t.stride(), t.storage_offset())
    return clone


# ---------------------------------------------------------------------------
# Weight views: a model's linear maps in one orientation, whatever the source
# ---------------------------------------------------------------------------

LINEARS = ("mlp.in", "mlp.gate", "mlp.out", "attn.q", "attn.k", "attn.v", "attn.o")


@dataclass(frozen=True)
class LinearView:
    """One linear map of a block, seen as `x @ W + b` with W of shape [d_in, d_out].

    Hugging Face GPT-2 stores `Conv1D` weights as [in, out], Llama stores
    `nn.Linear` weights as [out, in]; `W` is the parameter itself or its
    transpose, a view either way, so in-place edits of `W` land in the model.
    """

    name: str
    layer: int
    weight: torch.nn.Parameter
    bias: torch.nn.Parameter | None
    transposed: bool

    @property
    def W(self) -> torch.Tensor:
        return self.weight.T if self.transposed else self.weight

    def canonical(self, like_weight: torch.Tensor) -> torch.Tensor:
        """Put a tensor shaped like the parameter (e.g. its gradient) into [d_in, d_out]."""
        return like_weight.T if self.transposed else like_weight


def linear(model: Any, layer: int, name: str) -> LinearView:
    """The linear map `name` (one of LINEARS) of block `layer`."""
    if name not in LINEARS:
        raise ValueError(f"unknown linear {name!r}; choose one of {LINEARS}")
    n_layers = model.cfg.n_layers
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} is out of range: the model has {n_layers} layers (0..{n_layers - 1})")
    module = model.blocks[layer]
    for part in name.split("."):
        module = getattr(module, part, None)
        if module is None:
            raise ValueError(f"block {layer} of this model has no {name!r} (architecture "
                             f"{getattr(model.cfg, 'architecture', '?')})")
    inner = getattr(module, "_original_component", module)
    if isinstance(inner, torch.nn.Linear):
        transposed = True
    elif type(inner).__name__ == "Conv1D":
        transposed = False
    else:
        raise ValueError(f"{name} of block {layer} is a {type(inner).__name__}; excise reads "
                         "nn.Linear and Conv1D weights")
    return LinearView(name, layer, inner.weight, getattr(inner, "bias", None), transposed)


def has_linear(model: Any, name: str) -> bool:
    module = model.blocks[0]
    for part in name.split("."):
        module = getattr(module, part, None)
        if module is None:
            return False
    return True
