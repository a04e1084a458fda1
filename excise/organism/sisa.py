"""SISA on the organism: exact unlearning by retraining only what saw the deleted people.

    sisa = Sisa.train(SisaConfig(shards=5), root)      # k constituents, each checkpointed after every slice
    model = sisa.aggregate()                           # answers like one model (excise.organism.sisa_aggregate)
    deletion = sisa.delete(["Mira Tolvanen"])          # retrains the affected shards from their last clean slice
    deletion.summary()

Bourtoule et al. 2021 (Sharded, Isolated, Sliced, Aggregated training). The
world's people are split into `shards` disjoint groups, and each group into
`slices`. Constituent j is trained in stages: stage r starts from the
checkpoint after stage r - 1 and trains `slice_epochs` epochs on the general
text plus the facts of slices 0..r of shard j (the earlier slices are seen
again, as in the paper), with the organism recipe's optimiser, a fresh AdamW
and its own warmup + cosine schedule, seeded by (seed, shard, stage). Every
stage is saved as a Hugging Face directory (safetensors).

Why this is exact. Shard and slice are pure functions of the person's name
(a seeded hash, `shard_of` / `slice_of`): deleting one person never moves
another, and nothing in stage r depends on data of later slices (each stage
has its own schedule over its own data; a schedule over the whole shard would
make stage 0 depend on slice 2's size). So the checkpoint after stage r - 1 is
bit for bit what a run that never had the person (in slice r) would have
saved, and retraining stages r.. without them gives that run's weights (same
machine and thread count, as every seeded recipe here). A shard that held
none of the people is not touched.

Cost. Stage r trains on r + 1 slices, so the slices cost
`slice_epochs * (general + sum_r (r + 1) / slices * facts)` rows per shard;
`delete` pays that only for the stages from the first affected one, in the
affected shards (`Deletion.steps` counts optimiser steps of batch
`recipe.batch_size`, next to the full retrain's `full_retrain_steps`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from excise.organism.train import Recipe, fact_texts, fit
from excise.organism.world import World

log = logging.getLogger(__name__)

_MANIFEST = "sisa.json"


@dataclass(frozen=True)
class SisaConfig:
    """Everything that determines a SISA ensemble's weights (with the tokenizer)."""

    shards: int = 5
    slices: int = 2             # Bourtoule et al. measure 1-20 per shard; 2 keeps the re-seen data (x1.5) small
    slice_epochs: int = 12      # per stage; the last slice is seen this many epochs (the organism: 12 saturate)
    seed: int = 0               # shard/slice hash, model init and data order of every stage
    recipe: Recipe = field(default_factory=Recipe)   # architecture, optimiser, world; its epochs and seed unused

    def __post_init__(self) -> None:
        for name in ("shards", "slices", "slice_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"SisaConfig.{name} must be >= 1, got {getattr(self, name)}")

    def stage_recipe(self, shard: int, stage: int) -> Recipe:
        """The organism recipe for one stage: `slice_epochs` epochs, its own seed."""
        return replace(self.recipe, epochs=self.slice_epochs, seed=_hash(f"{self.seed}/{shard}/{stage}") % 2**31)


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def shard_of(name: str, shards: int, seed: int = 0) -> int:
    """The shard a person belongs to, and the constituent that answers about them: a seeded hash of the
    name, so it needs no table of who was trained and deleting one person moves nobody else."""
    return _hash(f"shard/{seed}/{name}") % shards


def slice_of(name: str, slices: int, seed: int = 0) -> int:
    """The slice of its shard a person's facts are trained in (an independent seeded hash)."""
    return _hash(f"slice/{seed}/{name}") % slices


def steps_for(n_rows: int, recipe: Recipe) -> int:
    """Optimiser steps `fit` takes on `n_rows` rows (its length-bucketed chunks of 16 batches)."""
    chunk = recipe.batch_size * 16
    per_epoch = sum(math.ceil(min(chunk, n_rows - c) / recipe.batch_size) for c in range(0, n_rows, chunk))
    return per_epoch * recipe.epochs


@dataclass
class Deletion:
    """What one `delete` retrained, and what it cost."""

    people: list[str]
    retrained: dict[int, int]          # shard -> first stage retrained (its checkpoint before it was kept)
    untouched: list[int]               # shards that held none of the people
    seconds: dict[int, float]          # shard -> wall seconds of its retraining
    steps: int                         # optimiser steps taken, over every retrained stage
    full_retrain_steps: int            # what the organism recipe takes on the world minus the people

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    def summary(self) -> str:
        shards = ", ".join(f"shard {j} from slice {r} ({self.seconds[j]:.0f}s)" for j, r in sorted(self.retrained.items()))
        return (f"deleted {len(self.people)} people: retrained {shards or 'nothing'}; untouched shards "
                f"{self.untouched}; {self.steps} steps ({self.steps / self.full_retrain_steps:.2f} of a full "
                f"retrain's {self.full_retrain_steps}), {self.total_seconds:.0f}s")

    def __repr__(self) -> str:
        return f"Deletion({self.summary()})"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_seconds": self.total_seconds}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Deletion:
        return cls(d["people"], {int(k): v for k, v in d["retrained"].items()}, d["untouched"],
                   {int(k): v for k, v in d["seconds"].items()}, d["steps"], d["full_retrain_steps"])


class Sisa:
    """A SISA ensemble on disk: `root/sisa.json` and `root/shard-J/stage-R/` (Hugging Face directories)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta = json.loads((self.root / _MANIFEST).read_text())
        self.config = SisaConfig(**{**meta["config"], "recipe": Recipe(**meta["config"]["recipe"])})
        self.deleted: list[str] = meta["deleted"]
        self.history: list[dict[str, Any]] = meta["history"]
        self.train_seconds: dict[int, float] = {int(k): v for k, v in meta["train_seconds"].items()}
        self.train_steps: dict[int, int] = {int(k): v for k, v in meta.get("train_steps", {}).items()}

    # -- layout -----------------------------------------------------------
    @cached_property
    def world(self) -> World:
        rec = self.config.recipe
        return World.generate(rec.world_seed, rec.n_people)

    def stage_dir(self, shard: int, stage: int) -> Path:
        return self.root / f"shard-{shard}" / f"stage-{stage}"

    def constituent_dir(self, shard: int) -> Path:
        """The constituent of `shard`: its last stage's checkpoint."""
        return self.stage_dir(shard, self.config.slices - 1)

    def people(self, shard: int, stage: int | None = None) -> list[str]:
        """The people of `shard` (in slices 0..stage; default all) not deleted, in world order."""
        c, gone = self.config, set(self.deleted)
        last = c.slices - 1 if stage is None else stage
        return [p for p in self.world.people if p not in gone and shard_of(p, c.shards, c.seed) == shard
                and slice_of(p, c.slices, c.seed) <= last]

    def rows(self, shard: int, stage: int, tokenizer) -> list[list[int]]:
        """Token rows of one stage: the general text and the facts of slices 0..stage (minus the deleted)."""
        people = set(self.people(shard, stage))
        w = self.world
        texts = fact_texts([f for f in w if f.subject in people]) + list(w.general) * self.config.recipe.general_repeats
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        return [[tokenizer.bos_token_id, *r, tokenizer.eos_token_id] for r in ids]

    # -- training ---------------------------------------------------------
    @classmethod
    def train(cls, config: SisaConfig, root: str | Path, tokenizer=None, without: Iterable[str] = (),
              progress: bool = True) -> Sisa:
        """Train every shard from scratch into `root` (never trained on the people in `without`).

        Cost: sum over shards and stages of `steps_for(rows)`; on the organism
        with 2 slices 1.5x (k = 5) and 1.6x (k = 10) the steps of its full
        training (the re-seen slice and k copies of the general text).
        """
        root = Path(root)
        if (root / _MANIFEST).exists():
            raise FileExistsError(f"{root} already holds a SISA ensemble; open it with Sisa({str(root)!r}) "
                                  "or choose an empty directory")
        root.mkdir(parents=True, exist_ok=True)
        tokenizer = tokenizer if tokenizer is not None else _shipped_tokenizer()
        tokenizer.save_pretrained(root / "tokenizer")
        _write(root, {"config": _config_dict(config), "deleted": sorted(set(without)), "history": [],
                      "train_seconds": {}, "train_steps": {}})
        sisa = cls(root)
        for j in range(config.shards):
            sisa.train_seconds[j], sisa.train_steps[j] = sisa._train_stages(j, 0, tokenizer, progress)
        sisa._save()
        return sisa

    def _train_stages(self, shard: int, first: int, tokenizer, progress: bool) -> tuple[float, int]:
        """Train stages first.. of `shard` (stage first - 1's checkpoint as the start); (seconds, steps)."""
        from transformers import GPT2Config, GPT2LMHeadModel

        rec = self.config.recipe
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=rec.n_positions, n_embd=rec.n_embd,
                            n_layer=rec.n_layer, n_head=rec.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                            attn_pdrop=0.0, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        seconds, steps = 0.0, 0
        for stage in range(first, self.config.slices):
            start = None if stage == 0 else self.stage_dir(shard, stage - 1)
            make = (lambda: GPT2LMHeadModel(config)) if start is None else \
                (lambda s=start: GPT2LMHeadModel.from_pretrained(s))
            rows = self.rows(shard, stage, tokenizer)
            stage_recipe = self.config.stage_recipe(shard, stage)
            model, sec = fit(make, rows, stage_recipe, pad_id=tokenizer.eos_token_id, progress=progress,
                             desc=f"sisa shard {shard} stage {stage}")
            out = self.stage_dir(shard, stage)
            shutil.rmtree(out, ignore_errors=True)
            model.save_pretrained(out, safe_serialization=True)
            tokenizer.save_pretrained(out)
            (out / "generation_config.json").unlink(missing_ok=True)
            seconds += sec
            steps += steps_for(len(rows), stage_recipe)
        return seconds, steps

    # -- unlearning -------------------------------------------------------
    def delete(self, people: Iterable[str], progress: bool = True) -> Deletion:
        """Forget every fact of `people`: retrain each affected shard from its last clean stage, in place.

        A shard none of the people belong to is not touched. Cost: the stages
        from the first affected slice on, in the affected shards only.
        """
        c = self.config
        people = sorted(set(people))
        known = set(self.world.people) - set(self.deleted)
        unknown = [p for p in people if p not in known]
        if unknown:
            raise ValueError(f"{unknown[:3]} are not people of this ensemble's world (or were deleted already): "
                             "delete names from Sisa.world.people")
        first: dict[int, int] = {}
        for p in people:
            j, r = shard_of(p, c.shards, c.seed), slice_of(p, c.slices, c.seed)
            first[j] = min(first.get(j, r), r)
        self.deleted = sorted(set(self.deleted) | set(people))
        tokenizer = self.tokenizer()
        seconds, steps = {}, 0
        for j, r in sorted(first.items()):
            seconds[j], s = self._train_stages(j, r, tokenizer, progress)
            steps += s
        full = steps_for(self._full_rows(), c.recipe)
        deletion = Deletion(people, first, [j for j in range(c.shards) if j not in first], seconds, steps, full)
        self.history.append(deletion.to_dict())
        self._save()
        log.info("%s", deletion.summary())
        return deletion

    def _full_rows(self) -> int:
        """Rows of the organism recipe's corpus on the world minus the deleted people."""
        gone = set(self.deleted)
        w = self.world
        return len(fact_texts([f for f in w if f.subject not in gone])) + len(w.general) * self.config.recipe.general_repeats

    def copy(self, to: str | Path) -> Sisa:
        """The ensemble copied to `to` (so a deletion can leave this one as it is)."""
        shutil.copytree(self.root, to)
        return Sisa(to)

    # -- the model ---------------------------------------------------------
    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.root / "tokenizer")

    def aggregate(self, device: str = "cpu"):
        """The constituents behind one model interface (`SisaAggregate`)."""
        from excise.models import load
        from excise.organism.sisa_aggregate import SisaAggregate

        c = self.config
        return SisaAggregate([load(str(self.constituent_dir(j)), device=device) for j in range(c.shards)],
                             seed=c.seed)

    def _save(self) -> None:
        _write(self.root, {"config": _config_dict(self.config), "deleted": self.deleted, "history": self.history,
                           "train_seconds": self.train_seconds, "train_steps": self.train_steps})

    def __repr__(self) -> str:
        c = self.config
        return (f"Sisa({c.shards} shards x {c.slices} slices, {c.slice_epochs} epochs per stage, "
                f"{len(self.deleted)} people deleted, at {self.root})")


def cached(config: SisaConfig, progress: bool = True) -> Sisa:
    """The ensemble of `config` on the shipped tokenizer: found under `cache_dir()/sisa/<key>`, else trained there."""
    from excise.cache import cache_dir

    root = cache_dir() / "sisa" / _key(config)
    if (root / _MANIFEST).exists():
        return Sisa(root)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    Sisa.train(config, tmp, progress=progress)
    tmp.rename(root)
    return Sisa(root)


def cached_deletion(config: SisaConfig, people: Iterable[str], progress: bool = True) -> tuple[Sisa, Deletion]:
    """`cached(config)` copied and with `people` deleted (cached too), and the Deletion as it was measured."""
    people = sorted(set(people))
    base = cached(config, progress)
    root = base.root.with_name(f"{base.root.name}-minus-{hashlib.sha256(json.dumps(people).encode()).hexdigest()[:12]}")
    if not (root / _MANIFEST).exists():
        tmp = root.with_name(root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        base.copy(tmp).delete(people, progress)
        tmp.rename(root)
    sisa = Sisa(root)
    return sisa, Deletion.from_dict(sisa.history[-1])


def _key(config: SisaConfig) -> str:
    from excise.organism import CHECKPOINT_DIR

    tokenizer_hash = hashlib.sha256((CHECKPOINT_DIR / "tokenizer.json").read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps({"config": _config_dict(config), "tokenizer": tokenizer_hash},
                                     sort_keys=True).encode()).hexdigest()[:20]


def _config_dict(config: SisaConfig) -> dict[str, Any]:
    return {**asdict(config), "recipe": asdict(config.recipe)}


def _write(root: Path, meta: dict[str, Any]) -> None:
    (root / _MANIFEST).write_text(json.dumps(meta, indent=1))


def _shipped_tokenizer():
    from transformers import AutoTokenizer

    from excise.organism import CHECKPOINT_DIR

    return AutoTokenizer.from_pretrained(CHECKPOINT_DIR)
