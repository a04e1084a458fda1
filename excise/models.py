"""Loading any model as a TransformerLens `TransformerBridge`.

`load(spec)` accepts:
- `"organism"`: the built-in model organism shipped inside the package;
- `"stories260k"`: a real pretrained tiny Llama shipped inside the package (`excise/zoo`);
- a local Hugging Face checkpoint directory (config.json + weights + tokenizer);
- a TransformerLens / Hugging Face model name (`"gpt2"`, `"pythia-70m"`): from
  the local Hugging Face cache when it is there, else from the hub, and when
  the hub cannot be reached it fails at once, saying how to load offline;
- an already-built `transformers` model (`torch.nn.Module`), with its tokenizer.

Weights are only ever read from safetensors or by transformers' own loaders;
nothing here unpickles.
"""

from __future__ import annotations

import contextlib

import difflib
import hashlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlparse

import torch

log = logging.getLogger(__name__)


@runtime_checkable
class HookedModel(Protocol):
    """What excise needs from a model; TransformerBridge provides it."""

    cfg: Any
    tokenizer: Any

    def __call__(self, input: Any, *args: Any, **kwargs: Any) -> torch.Tensor: ...
    def run_with_hooks(self, *args: Any, **kwargs: Any) -> Any: ...
    def run_with_cache(self, *args: Any, **kwargs: Any) -> Any: ...
    def to_tokens(self, input: str, prepend_bos: bool | None = None) -> torch.Tensor: ...
    def hooks(self, *args: Any, **kwargs: Any) -> Any: ...


class ModelLoadError(ValueError):
    """A model spec that cannot be loaded; the message says why and what to do."""


def load(spec: str | os.PathLike | torch.nn.Module = "organism", *, tokenizer: Any = None,
         device: str | torch.device | None = None, dtype: torch.dtype = torch.float32):
    """Load `spec` as a TransformerBridge in eval mode (see the module docstring)."""
    from transformer_lens.model_bridge import TransformerBridge

    if isinstance(spec, torch.nn.Module):
        bridge = _from_module(spec, tokenizer, device, dtype)
    else:
        path = _local_dir(spec)
        if path is None:
            path = _hub_snapshot(str(spec))
        bridge = _boot(TransformerBridge, str(path), device=device, dtype=dtype, tokenizer=tokenizer)
    bridge.eval()
    return bridge


def _boot(bridge_cls, name: str, **kwargs):
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        return bridge_cls.boot_transformers(name, **kwargs)
    except ValueError as e:
        if "not supported" in str(e).lower() or "architecture" in str(e).lower():
            raise ModelLoadError(
                f"TransformerLens cannot wrap {name!r}: {e}. See "
                "transformer_lens.model_bridge.TransformerBridge.list_supported_models()."
            ) from e
        raise


def _from_module(module: torch.nn.Module, tokenizer: Any, device, dtype):
    from transformer_lens.model_bridge import TransformerBridge

    config = getattr(module, "config", None)
    if config is None:
        raise ModelLoadError(
            f"excise.load got a {type(module).__name__}, which has no Hugging Face .config; "
            "pass a transformers model (e.g. GPT2LMHeadModel) or a checkpoint directory"
        )
    name = getattr(config, "_name_or_path", "") or ""
    if tokenizer is None:
        if name and Path(name).is_dir():
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(name)
        else:
            raise ModelLoadError(
                f"excise.load got a {type(module).__name__} without a tokenizer; pass "
                "tokenizer= (e.g. AutoTokenizer.from_pretrained(your_dir))"
            )
    if "name_or_path" in tokenizer.init_kwargs:
        return _boot(TransformerBridge, name or config.model_type, hf_model=module,
                     tokenizer=tokenizer, device=device, dtype=dtype)
    # TransformerLens re-loads the tokenizer from its name_or_path (to switch BOS
    # on); one built in memory has none, so give it a directory for the boot.
    import tempfile

    from transformers import AutoTokenizer
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        tokenizer = AutoTokenizer.from_pretrained(tmp)
        return _boot(TransformerBridge, name or config.model_type, hf_model=module,
                     tokenizer=tokenizer, device=device, dtype=dtype)


def _local_dir(spec: str | os.PathLike) -> Path | None:
    """The checkpoint directory `spec` names, or None if it names a hub model."""
    if str(spec) == "organism":
        from excise.organism import CHECKPOINT_DIR, checkpoint_ready
        if not checkpoint_ready():
            raise ModelLoadError(
                f"the organism checkpoint is missing from {CHECKPOINT_DIR}; rebuild it with "
                "`python -m excise.organism.train`"
            )
        return CHECKPOINT_DIR
    from excise.zoo import MODELS, ZOO_DIR
    if str(spec) in MODELS:
        return ZOO_DIR / str(spec)
    path = Path(spec).expanduser()
    looks_like_path = isinstance(spec, os.PathLike) or str(spec).startswith((".", "/", "~")) \
        or os.sep in str(spec) and path.exists()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(
                f"{str(path)!r} is a directory but has no config.json; a Hugging Face "
                "checkpoint directory holds config.json, the weights and the tokenizer "
                "(save one with model.save_pretrained(dir) and tokenizer.save_pretrained(dir))"
            )
        return path
    if looks_like_path:
        raise ModelLoadError(f"no checkpoint directory at {str(path)!r}")
    return None


def _hub_snapshot(name: str) -> str:
    """Resolve a model name to a local snapshot if cached; else check the hub is reachable."""
    from transformer_lens import supported_models

    try:
        official = supported_models.get_official_model_name(name)
    except ValueError:
        close = difflib.get_close_matches(name, supported_models.OFFICIAL_MODEL_NAMES, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ModelLoadError(
            f"unknown model {name!r}: it is not 'organism', not a local checkpoint directory "
            f"and not a model name TransformerLens knows.{hint} To load your own checkpoint, "
            "pass its directory: excise.load('path/to/dir')."
        ) from None
    with contextlib.suppress(Exception):  # not in the local cache: the hub is the only source
        from huggingface_hub import snapshot_download
        return snapshot_download(official, local_files_only=True)
    if not _hub_reachable():
        raise ModelLoadError(
            f"model {name!r} ({official}) is not in the local Hugging Face cache and the hub "
            "cannot be reached (offline?). Either download it once with network access "
            f"(excise.load({name!r}) or huggingface-cli download {official}), or load a "
            "local checkpoint directory: excise.load('path/to/dir'). The built-in model "
            "organism needs no network: excise.load('organism')."
        )
    return official


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


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
