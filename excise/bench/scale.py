"""`excise bench scale`: what each operation costs as the model grows, measured, fitted and extrapolated.

Randomly initialized GPT-2 and Llama models at four sizes, from 2 blocks x 128 wide to GPT-2 small's shape
(12 x 768, vocabulary 50,257: 124M parameters) and a Llama of the same depth and width (134M), each run
through the operations a deletion needs, on the organism's facts and tokenizer (token ids fit any of these
vocabularies; a random model knows no fact, so the work is fixed instead of stopped early, see OPS):

- seconds (wall) and peak memory above the loaded model (CPU: resident set size sampled every 5 ms, freed heap
  returned to the system before each operation; CUDA: the allocator's peak) per operation and size;
- the tokens each operation sends through the model, and how many of them with gradients (counted at every
  block and divided by the depth: a trace resumes runs from a middle layer), so its floating-point work is
  2 N per token forward and 4 N more per token backward (N the parameters): the on-paper FLOPs;
- per operation and architecture, the growth exponent b of seconds = a N^b (least squares on the log-log
  points), and the extrapolation to 1B and 8B parameters: seconds by the fitted law on this device, FLOPs and
  memory on paper for Llama-3-8B's shape (32 x 4096, d_mlp 14,336, vocabulary 128,256), and what must be
  sharded on one 80 GB GPU.

With `device="cuda"`, the same ladder on the GPU, and the smallest size also on the CPU: the CUDA numbers
(trace scores, ROME's update) are checked against the CPU's (`cuda_vs_cpu` in the JSON).
Writes DIR/scale.json and DIR/scale.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from excise.bench.results import write_result

OPS = {
    "trace": "causal trace of one fact (ROME's: 10 noise samples; MLP, attention and residual states at every "
             "layer and position)",
    "attribution": "attribution patching of one fact (heads and neurons; one forward and backward per run)",
    "fisher": "diagonal Fisher of neurons and heads over 50 facts (one forward and backward per fact)",
    "rome": "ROME on one fact: the key covariance on 64 texts (a fresh cache), then 20 steps of the value "
            "optimization (ROME's published count; no early stop) and the rank-one write",
    "memit": "MEMIT on 10 facts over 2 layers: covariances on 64 texts, 20 value steps per fact, the solve",
    "npo": "10 NPO steps on 10 facts and 40 retain facts, every parameter (early stopping off)",
    "audit": "the audit's default attacks on 4 facts against 12 never-seen facts, per audited fact",
}
SIZES = ((2, 128, 4), (4, 256, 4), (6, 512, 8), (12, 768, 12))      # (blocks, width, heads)
VOCAB = {"gpt2": 50257, "llama": 32000}
LLAMA_8B = {"params": 8.03e9, "n_layers": 32, "d_model": 4096, "d_mlp": 14336, "vocab": 128256}
GPU_MEMORY = 80e9
GPU_FLOPS = 0.4 * 989e12           # an H100's dense bf16 peak at 40% utilization


@dataclass
class Measured:
    seconds: float
    peak_bytes: int
    tokens: int
    grad_tokens: int


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextmanager
def _peak(device: str):
    """Yields a dict whose "bytes" is, on exit, the peak memory above the level at entry."""
    box: dict[str, int] = {}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        yield box
        torch.cuda.synchronize()
        box["bytes"] = torch.cuda.max_memory_allocated() - start
        return
    gc.collect()
    _trim()                                       # freed heap back to the system: the level at entry is what is live
    start, top, done = _rss(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            top[0] = max(top[0], _rss())
            time.sleep(0.005)
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        yield box
    finally:
        done.set()
        watcher.join()
        box["bytes"] = max(0, max(top[0], _rss()) - start)


def measure(model: Any, op: Callable[[], Any], device: str) -> Measured:
    """Run `op` once; its wall seconds, peak memory, and the tokens the model's input embedding saw (with
    gradients enabled: `grad_tokens`)."""
    counts = {"all": 0, "grad": 0}

    def count(module, inputs, output):
        n = output[0].numel() // model.cfg.d_model if isinstance(output, tuple) else output.numel() // model.cfg.d_model
        counts["all"] += n
        counts["grad"] += n if torch.is_grad_enabled() else 0
    hooks = [block.register_forward_hook(count) for block in model.blocks]
    try:
        with _peak(device) as box, warnings.catch_warnings():
            warnings.simplefilter("ignore")              # a random model recalls none of the facts: rome says so
            start = time.perf_counter()
            op()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
    finally:
        for hook in hooks:
            hook.remove()
    n = model.cfg.n_layers
    return Measured(seconds, box["bytes"], round(counts["all"] / n), round(counts["grad"] / n))


def build(arch: str, blocks: int, width: int, heads: int, path: Path, seed: int = 0) -> int:
    """Save a randomly initialized `arch` model with the organism's tokenizer to `path`; its parameter count."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from excise.organism import CHECKPOINT_DIR

    tok = AutoTokenizer.from_pretrained(CHECKPOINT_DIR)
    if arch == "gpt2":
        config = GPT2Config(vocab_size=VOCAB[arch], n_positions=1024, n_embd=width, n_layer=blocks, n_head=heads,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        make = GPT2LMHeadModel
    else:
        config = LlamaConfig(vocab_size=VOCAB[arch], hidden_size=width, intermediate_size=64 * round(8 * width / 3 / 64),
                             num_hidden_layers=blocks, num_attention_heads=heads, num_key_value_heads=heads,
                             max_position_embeddings=1024, tie_word_embeddings=False,
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        make = LlamaForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make(config).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model.num_parameters()


def operations(model: Any, seed: int = 0) -> dict[str, Callable[[], Any]]:
    """Each operation of OPS as a call on `model` (a fresh copy where it edits), on the organism's facts."""
    import excise.organism
    from excise.edit import MemitConfig, RomeConfig, memit, rome
    from excise.locate import attribution_patching, causal_trace, fisher
    from excise.methods import delete
    from excise.verify import audit
    from excise.weights import copy_model

    world = excise.organism.world()
    people = world.subjects[:20]
    facts = [world.of_subject(s)[0] for s in people]
    retain = list(world.retain_set(facts[:10], n=40, seed=seed))
    sample = list(excise.organism.corpus())[:64]
    n = model.cfg.n_layers
    layer = max(0, n // 3 - 1)
    v = dict(v_steps=20, stop_prob=0.0)
    context = excise.organism.context(facts[:4], 2, n_retain=40)
    context = context.override(sample=sample, general=sample[:16], holdout=context.holdout[:12])
    return {
        "trace": lambda: causal_trace(model, facts[0], seed=seed),
        "attribution": lambda: attribution_patching(model, facts[0]),
        "fisher": lambda: fisher(model, [world.of_subject(s)[i] for s in people[:10] for i in range(5)],
                                 config=excise.locate.FisherConfig(progress=False)),
        "rome": lambda: rome(copy_model(model), facts[0], RomeConfig(layer=layer, **v), sample=sample),
        "memit": lambda: memit(copy_model(model), facts[:10],
                               MemitConfig(layers=(layer, layer + 1) if layer + 1 < n - 1 else (layer,),
                                           v=RomeConfig(layer=layer, **v), progress=False), sample=sample),
        "npo": lambda: delete(copy_model(model), facts[:10], "npo", retain=retain, neurons=0, progress=False,
                              steps=10, stop_forget_recall=-1.0),
        "audit": lambda: audit(model, facts[:4], context=context, progress=False),
    }


def _fit(x: list[float], y: list[float]) -> tuple[float, float]:
    """(b, log a) of y = a x^b, least squares on the logs."""
    b, log_a = np.polyfit(np.log(x), np.log(y), 1)
    return float(b), float(log_a)


def on_paper(rows: list[dict[str, Any]], arch: str) -> dict[str, Any]:
    """Per operation: the growth exponent of seconds and of peak memory, seconds at 1B and 8B by that law,
    and for Llama-3-8B's shape the FLOPs (tokens scaled with depth where the operation's count grows with it)
    and the memory it needs on paper."""
    mine = sorted((r for r in rows if r["arch"] == arch), key=lambda r: r["params"])
    out: dict[str, Any] = {}
    for op in OPS:
        params = [r["params"] for r in mine]
        b, log_a = _fit(params, [r["ops"][op]["seconds"] for r in mine])
        mem = [max(r["ops"][op]["peak_bytes"], 1) for r in mine]
        b_mem, _ = _fit(params, mem)
        layers = [r["n_layers"] for r in mine]
        b_tok, _ = _fit(layers, [max(r["ops"][op]["tokens"], 1) for r in mine])
        top = mine[-1]["ops"][op]
        grow = (LLAMA_8B["n_layers"] / mine[-1]["n_layers"]) ** b_tok
        tokens, grad = top["tokens"] * grow, top["grad_tokens"] * grow
        flops = 2 * LLAMA_8B["params"] * tokens + 4 * LLAMA_8B["params"] * grad
        out[op] = {"seconds_exponent": round(b, 2), "memory_exponent": round(b_mem, 2),
                   "tokens_layer_exponent": round(b_tok, 2),
                   "seconds_1b": float(math.exp(log_a) * 1e9 ** b), "seconds_8b": float(math.exp(log_a) * 8.03e9 ** b),
                   "flops_8b": flops, "gpu_seconds_8b": flops / GPU_FLOPS, **memory_8b(op)}
    return out


def memory_8b(op: str) -> dict[str, Any]:
    """Bytes Llama-3-8B needs for `op` in bf16, on paper, and what must be sharded on one 80 GB GPU."""
    w = 2 * LLAMA_8B["params"]                                   # bf16 weights
    cov = 4 * LLAMA_8B["d_mlp"] ** 2                             # one layer's key covariance, float32
    need = {"trace": w, "attribution": w, "audit": w + w + 2 * w + 8 * LLAMA_8B["params"],  # relearn: a copy, grads, Adam
            "fisher": w + w + 4 * LLAMA_8B["params"] / LLAMA_8B["d_model"],                # grads; scores per neuron
            "rome": w + cov, "memit": w + 2 * cov,
            "npo": w + w + 2 * w + 8 * LLAMA_8B["params"]}[op]    # reference copy, grads, Adam m and v in float32
    fits = need <= GPU_MEMORY
    why = "fits on one GPU" if fits else (
        "shard over GPUs (device_map / FSDP), or confine the update to the located parameters so Adam keeps state "
        "for those alone" if op in ("npo", "audit") else "shard the weights (device_map='auto')")
    return {"bytes_8b": need, "fits_one_gpu": fits, "sharding": why}


def _one(arch: str, size: tuple[int, int, int], device: str, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    from excise.models import load

    blocks, width, heads = size
    with tempfile.TemporaryDirectory() as tmp:
        params = build(arch, blocks, width, heads, Path(tmp) / "model", seed)
        model = load(Path(tmp) / "model", device=device)
        row = {"arch": arch, "params": params, "n_layers": blocks, "d_model": width, "d_mlp": model.cfg.d_mlp,
               "ops": {}}
        for op, call in operations(model, seed).items():
            os.environ["EXCISE_CACHE"] = str(Path(tmp) / f"cache-{op}")   # each op computes its covariances
            m = measure(model, call, device)
            row["ops"][op] = {"seconds": round(m.seconds / (4 if op == "audit" else 1), 3),
                              "peak_bytes": m.peak_bytes, "tokens": m.tokens, "grad_tokens": m.grad_tokens}
            log(f"{arch} {params / 1e6:.1f}M {op}: {m.seconds:.2f} s, {m.peak_bytes / 2**20:.0f} MiB, "
                f"{m.tokens} tokens")
    return row


def run(out: str | Path, device: str = "cpu", seed: int = 0, sizes: tuple = SIZES,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start, kept = time.perf_counter(), os.environ.get("EXCISE_CACHE")
    try:
        rows = [_one(arch, size, device, seed, log) for arch in VOCAB for size in sizes]
        agree = cuda_vs_cpu(sizes[0], seed) if device.startswith("cuda") else None
    finally:
        if kept is None:
            os.environ.pop("EXCISE_CACHE", None)
        else:
            os.environ["EXCISE_CACHE"] = kept
    results = {"device": device, "ops": OPS, "rows": rows, "gpu_assumed": {"memory": GPU_MEMORY, "flops": GPU_FLOPS},
               "llama_8b": LLAMA_8B, "fit": {arch: on_paper(rows, arch) for arch in VOCAB}, "cuda_vs_cpu": agree}
    return write_result(out, "scale", results, to_markdown(results), seed, time.perf_counter() - start)


def cuda_vs_cpu(size: tuple[int, int, int], seed: int) -> dict[str, float]:
    """The smallest GPT-2 on CUDA and on the CPU: the largest difference of the trace's restored probabilities,
    and the cosine of ROME's two updates."""
    import excise.organism
    from excise.edit import RomeConfig, rome
    from excise.locate import causal_trace
    from excise.models import load
    from excise.weights import linear

    fact = excise.organism.world().facts[0]
    sample = list(excise.organism.corpus())[:64]
    got = {}
    with tempfile.TemporaryDirectory() as tmp:
        build("gpt2", *size, Path(tmp) / "m", seed)
        for device in ("cpu", "cuda"):
            model = load(Path(tmp) / "m", device=device)
            trace = causal_trace(model, fact, seed=seed).scores
            before = linear(model, 0, "mlp.out").W.detach().float().cpu().clone()
            rome(model, fact, RomeConfig(layer=0, v_steps=20, stop_prob=0.0), sample=sample)
            got[device] = (trace, (linear(model, 0, "mlp.out").W.detach().float().cpu() - before).flatten())
    (t_cpu, d_cpu), (t_gpu, d_gpu) = got["cpu"], got["cuda"]
    return {"trace_max_abs": max(float((t_cpu[k] - t_gpu[k]).abs().max()) for k in t_cpu),
            "rome_update_cosine": float(torch.nn.functional.cosine_similarity(d_cpu, d_gpu, dim=0))}


def _bytes(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _time(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.2f} s"


def to_markdown(r: dict[str, Any]) -> str:
    lines = ["# Scale: what each operation costs as the model grows", "",
             f"Randomly initialized GPT-2 and Llama models on `{r['device']}`; every operation on the organism's "
             "facts and tokenizer (module docstring of `excise/bench/scale.py`). Seconds are wall time "
             "(the audit's per audited fact); memory is the peak above the loaded model.", "",
             "| op | what |", "|---|---|", *[f"| {op} | {what} |" for op, what in r["ops"].items()], ""]
    for arch in VOCAB:
        rows = [x for x in r["rows"] if x["arch"] == arch]
        lines += [f"## {arch}", "", "| params | blocks x width | " + " | ".join(OPS) + " |",
                  "|---|---|" + "---|" * len(OPS)]
        for x in rows:
            cells = [f"{_time(x['ops'][op]['seconds'])} / {_bytes(x['ops'][op]['peak_bytes'])}" for op in OPS]
            lines.append(f"| {x['params'] / 1e6:.1f}M | {x['n_layers']} x {x['d_model']} | " + " | ".join(cells) + " |")
        fit = r["fit"][arch]
        lines += ["", "| op | seconds ~ N^b | memory ~ N^b | 1B (fitted) | 8B (fitted) |", "|---|---|---|---|---|"]
        lines += [f"| {op} | {f['seconds_exponent']} | {f['memory_exponent']} | {_time(f['seconds_1b'])} | "
                  f"{_time(f['seconds_8b'])} |" for op, f in fit.items()]
        lines.append("")
    fit = r["fit"]["llama"]
    lines += ["## Llama-3-8B on paper (bf16)", "",
              "Tokens per operation from the largest Llama row, scaled to 32 blocks where the count grows with "
              "depth (the trace's); FLOPs 2N per token forward plus 4N per token backward; GPU seconds at 40% of an "
              "H100's dense bf16 peak; memory for the weights and what the operation adds.", "",
              "| op | FLOPs | GPU seconds | memory | on one 80 GB GPU |", "|---|---|---|---|---|"]
    lines += [f"| {op} | {f['flops_8b']:.2e} | {_time(f['gpu_seconds_8b'])} | {_bytes(f['bytes_8b'])} | "
              f"{f['sharding']} |" for op, f in fit.items()]
    if r.get("cuda_vs_cpu"):
        a = r["cuda_vs_cpu"]
        lines += ["", f"CUDA against CPU on the smallest GPT-2: trace max difference {a['trace_max_abs']:.2e}, "
                      f"ROME update cosine {a['rome_update_cosine']:.5f}."]
    return "\n".join(lines) + "\n"
