"""The second moment C = E[k k^T] of MLP keys, estimated from text and cached on disk.

ROME's update writes along C^-1 k so that keys unlike k barely move. C is
estimated over every token of a text sample (for the organism its training
corpus; for a real model any iterable of strings), at the input of the MLP's
output matrix (`blocks.{l}.mlp.hook_post`). The cache file (safetensors) is
keyed by the model's fingerprint, the layer and a hash of the sample, and its
header records that provenance and the token count; a hit is reused as is.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from excise.components import hook_name
from excise.scoring import encode, pad_batch
from excise.weights import device_of, model_fingerprint

log = logging.getLogger(__name__)


def mlp_keys(model: Any, tokens: Tensor, layer: int, resid_after: int | None = None,
             ) -> Tensor | tuple[Tensor, Tensor]:
    """The MLP keys of block `layer` (`blocks.{layer}.mlp.hook_post`, the input of its output matrix) for
    token ids [batch, pos]: [batch, pos, d_mlp]. The forward stops after the block; with `resid_after`,
    after that block instead, and its residual output [batch, pos, d_model] comes back as well.

    The one place excise reads MLP keys: ROME's and MEMIT's keys, the key second moment, protect.
    """
    store: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(act, hook):
            store[name] = act
        return hook

    last = layer if resid_after is None else max(layer, resid_after)
    hooks = [(hook_name("neuron", layer), keep("k"))]
    if resid_after is not None:
        hooks.append((hook_name("resid", resid_after), keep("h")))
    device = device_of(model)
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(tokens.to(device), stop_at_layer=last + 1)
    return store["k"] if resid_after is None else (store["k"], store["h"])


def default_cache_dir() -> Path:
    from excise.cache import cache_dir

    return cache_dir() / "covariance"


@torch.no_grad()
def estimate_second_moment(
    model: Any, layer: int, texts: list[str], batch_size: int = 64, progress: bool = True,
) -> tuple[Float[Tensor, "d_mlp d_mlp"], int]:
    """E[k k^T] over every real token of `texts` (float64 accumulation); returns (C, n_tokens)."""
    if not texts:
        raise ValueError("the covariance needs a text sample; got no texts")
    n_layers = model.cfg.n_layers
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} is out of range: the model has {n_layers} layers (0..{n_layers - 1})")
    rows = [r[: model.cfg.n_ctx] for r in encode(model, texts)]       # as ROME's layer_stats: cut at the context
    pad = model.tokenizer.pad_token_id or 0
    device = device_of(model)
    d = model.cfg.d_mlp
    acc = None                                    # float64, on the device of the layer's keys (a split model's)
    count = 0
    batches = range(0, len(rows), batch_size)
    for start in tqdm(batches, desc=f"covariance L{layer}", disable=not progress or len(batches) < 10):
        tokens, last = pad_batch(rows[start:start + batch_size], pad)
        real = (torch.arange(tokens.shape[1])[None] <= last[:, None]).to(device)
        keys = mlp_keys(model, tokens, layer)
        k = keys[real.to(keys.device)].double()
        acc = k.T @ k if acc is None else acc + k.T @ k
        count += k.shape[0]
    return (acc / count).float(), count


def second_moment(
    model: Any, layer: int, texts: Iterable[str], cache_dir: Path | None = None,
    batch_size: int = 64, progress: bool = True,
) -> Float[Tensor, "d_mlp d_mlp"]:
    """C for `layer`, from the disk cache when model, layer and sample match."""
    texts = list(texts)
    sample_hash = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    fp = model_fingerprint(model)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"{fp}-L{layer}-{sample_hash}.safetensors"
    if path.exists():
        with safe_open(str(path), framework="pt") as f:
            C = f.get_tensor("C")
        log.info("covariance cache hit: %s", path)
        return C.to(device_of(model))
    C, n_tokens = estimate_second_moment(model, layer, texts, batch_size, progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    provenance = {"model_fingerprint": fp, "layer": layer, "n_texts": len(texts),
                  "n_tokens": n_tokens, "sample_sha256_16": sample_hash, "hook": hook_name("neuron", layer)}
    tmp = path.with_suffix(".tmp")
    save_file({"C": C.cpu().contiguous()}, str(tmp), metadata={"excise": json.dumps(provenance)})
    tmp.replace(path)
    return C


def provenance(path: str | Path) -> dict[str, Any]:
    """The header of a cached covariance file."""
    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {})["excise"])
