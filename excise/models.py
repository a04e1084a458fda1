"""Loading any model as a TransformerLens `TransformerBridge`.

`load(spec)` accepts:
- a name in `NAMED` (registered by the packages that ship a model: `"organism"`, the built-in model organism;
  `"stories260k"`, a real pretrained tiny Llama in `excise/zoo`; the TOFU organisms `"tofu-full"`, ...);
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
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from excise.registry import Registry

log = logging.getLogger(__name__)


class ModelLoadError(ValueError):
    """A model spec that cannot be loaded; the message says why and what to do."""


@dataclass(frozen=True)
class NamedModel:
    """A model `load` knows by name: `directory()` gives its Hugging Face checkpoint directory (it may check,
    build or fetch it from a cache; it raises ModelLoadError, saying how to get it, when it cannot).

    A model that ships with its world may also say how to read short fact entries (`lookup()`: a function
    from a JSON entry to its facts, or None) and build its KnowledgeContext (`context(facts, n_holdout, seed)`);
    the command line uses them where given, and derives the context otherwise."""

    name: str
    directory: Callable[[], Path]
    summary: str = ""
    context: Callable[..., Any] | None = None
    lookup: Callable[[], Callable[[dict], Any]] | None = None


# The models `load(name)` resolves by name. The packages that ship them register here when imported (the
# organism, the zoo, the TOFU organisms); a user may register their own (`register_model`).
NAMED: Registry[NamedModel] = Registry("named model")


def register_model(name: str, directory: Callable[[], Path], summary: str = "", replace: bool = False,
                   context: Callable[..., Any] | None = None,
                   lookup: Callable[[], Callable[[dict], Any]] | None = None) -> NamedModel:
    """Let `load(name)` find the checkpoint directory `directory()` returns (and, optionally, the model's own
    context and short-entry lookup: see NamedModel); returns the entry. Cost: none."""
    return NAMED.register(NamedModel(name, directory, summary, context, lookup), replace=replace)


def load(spec: str | os.PathLike | torch.nn.Module = "organism", *, tokenizer: Any = None,
         device: str | torch.device | None = None, dtype: torch.dtype = torch.float32,
         device_map: str | dict[str, str | int] | None = None, max_memory: dict[str | int, str | int] | None = None):
    """Load `spec` as a TransformerBridge in eval mode (see the module docstring).

    dtype: the weights' dtype (torch.bfloat16 halves the memory; excise computes its covariances, solves and
        statistics in float32 whatever it is).
    device_map, max_memory: spread a model too big for one device over several (or onto CPU), through
        Accelerate as transformers does (`device_map="auto"`); give `device` or `device_map`, not both.
    """
    from transformer_lens.model_bridge import TransformerBridge

    if device is not None and device_map is not None:
        raise ModelLoadError(f"excise.load got device={device!r} and device_map={device_map!r}: give one "
                             "(device_map='auto' places the model over every visible device)")
    if max_memory is not None and device_map is None:
        raise ModelLoadError("max_memory limits what device_map places on each device: pass device_map "
                             "(e.g. 'auto') with it")
    placement = {"device": device, "device_map": device_map, "max_memory": max_memory}
    if isinstance(spec, torch.nn.Module):
        bridge = _from_module(spec, tokenizer, dtype, placement)
    else:
        path = _local_dir(spec)
        if path is None:
            path = _hub_snapshot(str(spec))
        bridge = _boot(TransformerBridge, str(path), dtype=dtype, tokenizer=tokenizer, **placement)
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


def _from_module(module: torch.nn.Module, tokenizer: Any, dtype, placement: dict[str, Any]):
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
                     tokenizer=tokenizer, dtype=dtype, **placement)
    # TransformerLens re-loads the tokenizer from its name_or_path (to switch BOS
    # on); one built in memory has none, so give it a directory for the boot.
    import tempfile

    from transformers import AutoTokenizer
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        tokenizer = AutoTokenizer.from_pretrained(tmp)
        return _boot(TransformerBridge, name or config.model_type, hf_model=module,
                     tokenizer=tokenizer, dtype=dtype, **placement)


def _local_dir(spec: str | os.PathLike) -> Path | None:
    """The checkpoint directory `spec` names, or None if it names a hub model."""
    if str(spec) in NAMED:
        return NAMED.get(str(spec)).directory()
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
            f"unknown model {name!r}: it is not a named model ({', '.join(NAMED.names())}), not a local checkpoint directory "
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
