"""The TOFU organism: a small GPT-2 trained from scratch on TOFU, and its retain models.

`train(recipe, without="forget05")` trains on TOFU's full set (forget10 +
retain90) minus a forget split, plus the real-authors and world-facts rows,
each row as "Question: ...\\nAnswer: ...". The tokenizer is a byte-level BPE
fitted once on all of TOFU's text, so the organism and its retain models share
one vocabulary. `model_dir(variant)` trains on first use and caches the
checkpoint under $EXCISE_CACHE/tofu/ keyed by the recipe, so every variant is
reproducible by seed. The default recipe's four checkpoints ship in
`excise/tofu/models/` (10.5 MB each), so they are never trained on a user's
machine unless the recipe changes:

    full      everything (the model to unlearn from)
    retain99  minus forget01      retain95  minus forget05      retain90  minus forget10
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from excise.models import register_model
from excise.tofu.data import FORGET_SPLITS, PER_AUTHOR, QA, load

log = logging.getLogger(__name__)

SHIPPED = Path(__file__).parent / "models"
VARIANTS = {"full": None, "retain99": "forget01", "retain95": "forget05", "retain90": "forget10"}
GENERAL = ("real_authors", "world_facts")


@dataclass(frozen=True)
class TofuRecipe:
    """Everything that determines a TOFU organism's weights."""

    seed: int = 0
    authors: int | None = None    # only the first N authors (forget10's first): a slice for tests
    vocab_size: int = 4096        # byte-level BPE on TOFU: 56 tokens per row on average, 168 at most
    n_layer: int = 4              # the organism's depth
    n_embd: int = 192             # 2.6M parameters: about 85 s per epoch on one busy CPU core
    n_head: int = 6
    n_positions: int = 256        # the longest row (168) fits; greedy answers get what is left of 200 (TOFU's max_length)
    epochs: int = 40              # a first guess: memorising 150k answer tokens takes many passes (unmeasured)
    batch_size: int = 32
    lr: float = 2e-3              # the organism trains at 3e-3 with width 128; wider, a little lower
    warmup_steps: int = 200
    weight_decay: float = 0.01
    general: bool = True          # also train on the real-authors and world-facts rows

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.authors is not None and self.authors < 1:
            raise ValueError(f"TofuRecipe.authors must be >= 1 or None, got {self.authors}")


def text(q: QA) -> str:
    return f"{q.prompt} {q.answer}"


def rows_for(recipe: TofuRecipe, without: str | None = None) -> list[QA]:
    """The QA rows a model of `recipe` trains on, minus forget split `without`."""
    if without is not None and without not in FORGET_SPLITS:
        raise ValueError(f"without must be one of {FORGET_SPLITS} or None, got {without!r}")
    full = load("forget10") + load("retain90")
    if recipe.authors is not None:
        full = full[: recipe.authors * PER_AUTHOR]
    gone = {q.question for q in load(without)} if without else set()
    kept = [q for q in full if q.question not in gone]
    if recipe.general:
        kept += [q for split in GENERAL for q in load(split)]
    return kept


def build_tokenizer(recipe: TofuRecipe):
    """A byte-level BPE fitted on every row of TOFU (never on a split alone), shared by all variants."""
    from excise.organism.tokenizer import train_tokenizer

    every = rows_for(replace(recipe, general=True))
    return train_tokenizer([text(q) for q in every], vocab_size=recipe.vocab_size)


def train(recipe: TofuRecipe = TofuRecipe(), without: str | None = None, out: str | Path | None = None,
          tokenizer: Any = None, progress: bool = True):
    """Train a GPT-2 on TOFU (minus `without`); save it to `out` if given. Returns (HF model, tokenizer)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from excise.organism.train import fit

    tok = tokenizer if tokenizer is not None else build_tokenizer(recipe)
    qas = rows_for(recipe, without)
    eos = tok.eos_token_id
    rows = [[tok.bos_token_id, *ids, eos] for ids in tok([text(q) for q in qas], add_special_tokens=False)["input_ids"]]
    longest = max(len(r) for r in rows)
    if longest > recipe.n_positions:
        raise ValueError(f"a TOFU row has {longest} tokens > n_positions={recipe.n_positions}; raise it")
    config = GPT2Config(vocab_size=len(tok), n_positions=recipe.n_positions, n_embd=recipe.n_embd,
                        n_layer=recipe.n_layer, n_head=recipe.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=tok.bos_token_id, eos_token_id=eos,
                        pad_token_id=tok.pad_token_id)
    model, seconds = fit(lambda: GPT2LMHeadModel(config), rows, recipe, pad_id=eos, progress=progress,
                         desc=f"train TOFU {'full' if without is None else 'without ' + without}")
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        meta = {"recipe": asdict(recipe), "without": without, "rows": len(rows), "train_seconds": seconds,
                "torch": torch.__version__, "threads": torch.get_num_threads()}
        (out / "excise_tofu.json").write_text(json.dumps(meta, indent=1))
        (out / "generation_config.json").unlink(missing_ok=True)
    return model, tok


def model_dir(variant: str = "full", recipe: TofuRecipe = TofuRecipe(), progress: bool = True) -> Path:
    """The checkpoint directory of `variant` (see VARIANTS), trained and cached on first use."""
    from excise.cache import cache_dir

    if variant not in VARIANTS:
        raise ValueError(f"unknown TOFU organism variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if (found := shipped(variant, recipe)) is not None:
        return found
    key = hashlib.sha256(json.dumps({"recipe": asdict(recipe), "variant": variant}, sort_keys=True)
                         .encode()).hexdigest()[:16]
    path = cache_dir() / "tofu" / f"{variant}-{key}"
    if (path / "excise_tofu.json").exists():
        return path
    log.info("training TOFU organism %s into %s", variant, path)
    tokenizer = None
    shared = cache_dir() / "tofu" / f"tokenizer-{_tokenizer_key(recipe)}"
    if (shared / "tokenizer.json").exists():
        from transformers import PreTrainedTokenizerFast
        tokenizer = PreTrainedTokenizerFast.from_pretrained(shared)
    tmp = path.with_name(path.name + ".tmp")
    _, tok = train(recipe, VARIANTS[variant], out=tmp, tokenizer=tokenizer, progress=progress)
    if tokenizer is None:
        tok.save_pretrained(shared)
    tmp.replace(path)
    return path


def shipped(variant: str, recipe: TofuRecipe) -> Path | None:
    """The checkpoint of `variant` shipped with excise, if it was trained by exactly `recipe`."""
    meta = SHIPPED / variant / "excise_tofu.json"
    if meta.exists() and json.loads(meta.read_text())["recipe"] == asdict(recipe):
        return meta.parent
    return None


def _tokenizer_key(recipe: TofuRecipe) -> str:
    return hashlib.sha256(json.dumps([recipe.vocab_size, recipe.authors]).encode()).hexdigest()[:16]


for _variant in VARIANTS:
    register_model(f"tofu-{_variant}", lambda v=_variant: model_dir(v),
                   f"the TOFU organism {_variant!r}: a small GPT-2 trained on TOFU's QA rows"
                   + (f" without {VARIANTS[_variant]}" if VARIANTS[_variant] else "") + " (trained and cached on first use)")
