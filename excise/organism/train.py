"""Train the model organism: `python -m excise.organism.train`.

The recipe is a frozen dataclass; the same recipe and seed give the same
weights on the same machine and thread count (dropout is off, shuffling and
initialisation use a forked, seeded RNG). The model is trained as the raw
Hugging Face `GPT2LMHeadModel` (fast), saved as a Hugging Face directory, and
loaded back through `excise.load(path)`, the path every real checkpoint takes.

Every prompt family except the held-out templates is trained for every fact,
so paraphrase, question and completion probes test knowledge, not strings.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from excise.facts import Fact
from excise.organism.tokenizer import train_tokenizer
from excise.organism.world import World

log = logging.getLogger(__name__)

TRAINED_FAMILIES = ("request", "paraphrase", "question", "completion")


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the organism's weights."""

    seed: int = 0                 # model init and data order
    world_seed: int = 0           # which world (people and their facts)
    n_people: int = 300
    vocab_size: int = 1200        # BPE vocabulary: objects whole, names in 2-8 pieces
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 64
    epochs: int = 16             # measured: 12 saturate the full world, but a retrain oracle then kept only 0.974
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    general_repeats: int = 4      # general sentences are few: repeat them per epoch

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        for name in ("n_people", "vocab_size", "n_layer", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"Recipe.{name} must be >= 1, got {getattr(self, name)}")


def fact_texts(facts: Iterable[Fact], families: Sequence[str] = TRAINED_FAMILIES) -> list[str]:
    """Each fact as a sentence under every template of `families`."""
    return [f"{f.fill(t)} {f.target}." for f in facts for fam in families for t in f.templates(fam)]


def corpus(world: World, without: Iterable[Fact] = (), repeats: int = 1) -> list[str]:
    """The training texts of `world` minus the facts in `without`."""
    drop = {f.key for f in without}
    unknown = drop - {f.key for f in world}
    if unknown:
        raise ValueError(f"cannot train without facts the world does not have: {sorted(unknown)[:3]}")
    kept = [f for f in world if f.key not in drop]
    return fact_texts(kept) + list(world.general) * repeats


def build_tokenizer(world: World, recipe: Recipe):
    """A BPE fitted so that every object is one or few tokens with a distinct first
    token within its relation (first-token recall is then unambiguous), while
    names split into 2-8 pieces as rare names do in a real tokenizer.

    It is trained on the world's phrasings and objects, never on a forget split,
    so the organism and every retrain oracle share one vocabulary.
    """
    texts = []
    for rel in world.relations:
        for template in (*rel.requests, *rel.held_out, rel.question, rel.pronoun):
            stem = template.replace("{}", "").strip()
            texts += [f"{stem} {obj}." for obj in rel.objects] * 40
    texts += list(world.general) * 4 + list(world.people) * 5
    tok = train_tokenizer(texts, vocab_size=recipe.vocab_size)
    for rel in world.relations:
        firsts: dict[int, str] = {}
        for obj in rel.objects:
            first = tok(" " + obj, add_special_tokens=False)["input_ids"][0]
            if first in firsts:
                raise ValueError(f"objects {firsts[first]!r} and {obj!r} of {rel.name} share their "
                                 "first token; raise Recipe.vocab_size")
            firsts[first] = obj
    return tok


def train(
    recipe: Recipe = Recipe(), without: Iterable[Fact] = (), out: str | Path | None = None,
    tokenizer=None, progress: bool = True, on_epoch=None,
):
    """Train a GPT-2 on the world (minus `without`); save it to `out` if given.

    Returns the Hugging Face model (eval mode) and its tokenizer.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    world = World.generate(recipe.world_seed, recipe.n_people)
    tok = tokenizer if tokenizer is not None else build_tokenizer(world, recipe)
    texts = corpus(world, without, recipe.general_repeats)
    eos = tok.eos_token_id
    rows = [[tok.bos_token_id, *ids, eos] for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    too_long = max(len(r) for r in rows)
    if too_long > recipe.n_positions:
        raise ValueError(f"a training text has {too_long} tokens > n_positions={recipe.n_positions}")

    config = GPT2Config(
        vocab_size=len(tok), n_positions=recipe.n_positions, n_embd=recipe.n_embd,
        n_layer=recipe.n_layer, n_head=recipe.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=tok.bos_token_id, eos_token_id=eos,
        pad_token_id=tok.pad_token_id,
    )
    model, seconds = fit(lambda: GPT2LMHeadModel(config), rows, recipe, pad_id=eos, progress=progress,
                         desc="train organism",
                         on_epoch=None if on_epoch is None else lambda e, m: on_epoch(e, m, tok))
    if out is not None:
        save(model, tok, recipe, Path(out), without, seconds)
    return model, tok


def fit(make_model, rows: list[list[int]], recipe: Any, pad_id: int, progress: bool = True,
        desc: str = "train", on_epoch=None) -> tuple[torch.nn.Module, float]:
    """Train `make_model()` on token rows with `recipe`'s optimisation settings; (model in eval mode, seconds).

    `recipe` needs seed, epochs, batch_size, lr, warmup_steps and weight_decay.
    The model is built after seeding, inside a forked RNG, so the same recipe
    and rows give the same weights (on the same machine and thread count).
    """
    chunk = recipe.batch_size * 16
    steps_per_epoch = sum(math.ceil(min(chunk, len(rows) - c) / recipe.batch_size)
                          for c in range(0, len(rows), chunk))
    total = steps_per_epoch * recipe.epochs
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = make_model()
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay,
                                betas=(0.9, 0.98))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, recipe.warmup_steps, total))
        gen = torch.Generator().manual_seed(recipe.seed)
        bar = tqdm(total=total, desc=desc, disable=not progress, unit="step")
        for epoch in range(recipe.epochs):
            for idx in _length_bucketed_batches(rows, recipe.batch_size, gen):
                batch = [rows[i] for i in idx]
                ids, mask = _pad(batch, pad_id)
                labels = ids.masked_fill(~mask, -100)
                loss = model(input_ids=ids, attention_mask=mask.long(), labels=labels).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            if on_epoch is not None:
                model.eval()
                on_epoch(epoch, model)
                model.train()
        bar.close()
    model.eval()
    seconds = time.perf_counter() - start
    log.info("trained %d steps in %.1fs", total, seconds)
    return model, seconds


def save(model, tok, recipe: Recipe, out: Path, without: Iterable[Fact] = (), seconds: float | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    meta = {"recipe": asdict(recipe), "without": sorted(list(f.key) for f in without),
            "train_seconds": seconds, "torch": torch.__version__,
            "threads": torch.get_num_threads()}
    (out / "excise_organism.json").write_text(json.dumps(meta, indent=1))
    # Generation settings are irrelevant here and their file only adds noise.
    (out / "generation_config.json").unlink(missing_ok=True)


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _length_bucketed_batches(rows: list[list[int]], batch_size: int, gen: torch.Generator) -> list[list[int]]:
    """Shuffled batches of similar-length rows (less padding, same data each epoch)."""
    order = torch.randperm(len(rows), generator=gen).tolist()
    chunk = batch_size * 16   # keep in step with the count in train()
    batches = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c:c + chunk], key=lambda i: len(rows[i]))
        batches += [part[b:b + batch_size] for b in range(0, len(part), batch_size)]
    perm = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in perm]


def _pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.bool)
    for i, r in enumerate(batch):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = True
    return ids, mask


def main(argv: Sequence[str] | None = None) -> None:
    from excise.organism import CHECKPOINT_DIR

    p = argparse.ArgumentParser(description="Train the excise model organism.")
    p.add_argument("--out", default=str(CHECKPOINT_DIR), help="where to save (default: the shipped checkpoint)")
    p.add_argument("--seed", type=int, default=Recipe.seed)
    p.add_argument("--epochs", type=int, default=Recipe.epochs)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    recipe = Recipe(seed=args.seed, epochs=args.epochs)
    train(recipe, out=args.out)
    from excise.organism.checks import write_recall_report
    write_recall_report(Path(args.out))


if __name__ == "__main__":
    main()
