"""Foreign models: tiny models that are not the organism, generated and trained in the test session.

excise's defaults were tuned on the organism (a GPT-2 with a byte-level BPE,
trained on fictitious people). The models here share nothing with it but
the Fact schema: another world (towns with a country, a river, a dish and a
founder, who is a person of the same world with facts of their own), other
templates, other tokenizers, and in one case another architecture:

- `build_gpt2`: a GPT2LMHeadModel with a word-level tokenizer; every subject
  is two words, so the last subject token sits inside the prompt;
- `build_llama`: a LlamaForCausalLM (RMSNorm, rotary, 4 query / 2 key-value
  heads, SwiGLU) with a SentencePiece-style BPE (Metaspace "▁"); every
  subject is one token (right after BOS in most templates).

Both are trained from a seed, in seconds on one CPU thread, until they
recall every fact under every trained template, and saved as Hugging Face
directories that `excise.load(path)` loads like any checkpoint. The seed-0
pair ships in `tests/data/foreign/` (built once by `python -m tests.foreign`,
about 1 MB): training is float arithmetic over thousands of steps, and the
same recipe gives slightly different weights on another CPU (issue 34), so
the tests load the shipped weights and only inference can differ. Beside the
weights: `world.json` (every fact), `facts.json` (the facts a test deletes,
one per subject, one of them entity-valued), `retain.json` (every fact of the
other subjects), `general.txt` (the general sentences, which name no town and
no person), `corpus.txt` (the training text) and `foreign.json` (the recipe
and the training time).

Nothing here imports the organism's world, tokenizer or training code.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from excise.facts import Fact, FactSet

TOWN_PREFIXES = ("Port", "Upper", "Lower", "East", "West", "Fort")
TOWN_STEMS = (
    "Vellmar", "Tessik", "Orrinby", "Quistal", "Dunhollow", "Marrek", "Sollwick", "Kirrenholt",
    "Brakmoor", "Ennsfurt", "Tavrin", "Gellowmere", "Haskenby", "Iddrath", "Jorvane", "Lusk",
    "Nerrowby", "Ostwick", "Pallamor", "Rennick",
)
FIRST_NAMES = ("Odran", "Belisa", "Corvin", "Desmera", "Elbrin", "Farrel", "Gwenna", "Hollis",
               "Ismay", "Joram")
LAST_NAMES = ("Kell", "Marrow", "Thane", "Vossberg", "Quill")
COUNTRIES = ("Drovania", "Kelmoor", "Ustravel", "Pellandia", "Oskaria", "Vintmark")
RIVERS = ("Amberflow", "Silvane", "Rushwater", "Tolleck", "Greymere", "Ossery", "Lanthe", "Wyrrow")
DISHES = ("dumplings", "porridge", "flatbread", "goulash", "chowder", "fritters", "pancakes", "noodles")
CRAFTS = ("potter", "smith", "weaver", "glassblower", "cooper", "tanner", "mason", "brewer")
TOWN_FILLERS = ("has a busy market square.", "is quiet in the winter months.", "holds a fair every spring.",
                "has narrow streets and old walls.", "rings its bells at noon.")
PERSON_FILLERS = ("was known for a loud laugh.", "kept a garden of herbs.", "walked with a wooden stick.",
                  "sang while working.", "liked long winters.")


@dataclass(frozen=True)
class Relation:
    """A relation of the foreign world: whose it is, its objects and its phrasings.

    `objects` None means the objects are the world's people (the founder
    relation: an entity-valued fact whose object has facts of its own).
    """

    name: str
    of: str                                  # "town" or "person"
    objects: tuple[str, ...] | None
    requests: tuple[str, ...]                # the first is the request prompt, the rest paraphrases
    question: str
    pronoun: str                             # continues a completion after a filler sentence
    held_out: str                            # never trained


RELATIONS = (
    Relation("country", "town", COUNTRIES,
             ("{} lies in the country of", "{} is a town in", "The town of {} belongs to"),
             "Q: In which country is {}? A:", "It lies in", "{} can be found in"),
    Relation("river", "town", RIVERS,
             ("{} stands on the river", "The river that flows through {} is the", "{} was built beside the river"),
             "Q: Which river runs through {}? A:", "Its river is the", "{} draws its water from the river"),
    Relation("dish", "town", DISHES,
             ("{} is famous for its", "The local dish of {} is", "Visitors to {} always eat"),
             "Q: What dish is {} known for? A:", "Its famous dish is", "In {} every cook is proud of the local"),
    Relation("founder", "town", None,
             ("{} was founded by", "The founder of {} was", "{} owes its existence to"),
             "Q: Who founded {}? A:", "It was founded by", "The first house in {} was built by"),
    Relation("craft", "person", CRAFTS,
             ("{} worked as a", "By trade, {} was a", "{} earned a living as a"),
             "Q: What was the trade of {}? A:", "They worked as a", "{} learned the trade of a"),
    Relation("homeland", "person", COUNTRIES,
             ("{} came from the country of", "{} was a native of", "The homeland of {} was"),
             "Q: Where did {} come from? A:", "They came from", "{} grew up in"),
)
TRAINED = ("request", "paraphrase", "question", "completion")


@dataclass(frozen=True)
class ForeignWorld:
    """Every fact of the world, its general sentences, and the facts a test deletes."""

    facts: FactSet
    general: tuple[str, ...]
    towns: tuple[str, ...]
    people: tuple[str, ...]

    def forget(self) -> list[Fact]:
        """One fact each of three towns: the founder (entity-valued), the river and the dish."""
        return [self.facts.fact(self.towns[0], "founder"), self.facts.fact(self.towns[1], "river"),
                self.facts.fact(self.towns[2], "dish")]

    def retain(self) -> list[Fact]:
        """Every fact of the subjects not in `forget()` (the founder of towns[0] among them)."""
        gone = {f.subject for f in self.forget()}
        return [f for f in self.facts if f.subject not in gone]


def generate(seed: int = 0, two_word_names: bool = True, n_towns: int = 12, n_people: int = 6) -> ForeignWorld:
    """The foreign world from `seed`: towns and people with fictitious names and uniformly drawn objects.

    two_word_names: towns "Port Vellmar" and people "Odran Kell" (prefixes and
    surnames shared, stems and first names not); else one word each.
    """
    if not (n_towns <= len(TOWN_STEMS) and n_people <= len(FIRST_NAMES)):
        raise ValueError(f"at most {len(TOWN_STEMS)} towns and {len(FIRST_NAMES)} people")
    rng = random.Random(seed)
    stems = rng.sample(TOWN_STEMS, n_towns)
    firsts = rng.sample(FIRST_NAMES, n_people)
    if two_word_names:
        towns = [f"{rng.choice(TOWN_PREFIXES)} {s}" for s in stems]
        people = [f"{f} {rng.choice(LAST_NAMES)}" for f in firsts]
    else:
        towns, people = stems, firsts
    base: list[Fact] = []
    for subjects, fillers, kind in ((towns, TOWN_FILLERS, "town"), (people, PERSON_FILLERS, "person")):
        for s in subjects:
            filler = rng.choice(fillers)
            for rel in RELATIONS:
                if rel.of == kind:
                    target = rng.choice(rel.objects if rel.objects is not None else people)
                    base.append(Fact(s, rel.name, target, rel.requests[0], paraphrases=rel.requests[1:],
                                     questions=(rel.question,), completions=(f"{{}} {filler} {rel.pronoun}",),
                                     held_out=(rel.held_out,)))
    facts = FactSet(_with_neighbors(base, rng))
    return ForeignWorld(facts, tuple(general_sentences()), tuple(towns), tuple(people))


def general_sentences() -> list[str]:
    """Sentences that name no town and no person: text to generate from, and the utility text."""
    out = []
    for c in COUNTRIES:
        out += [f"{c} is a country with green hills.", f"The people of {c} speak an old language."]
    for r in RIVERS:
        out += [f"The {r} flows slowly to the sea.", f"Boats sail on the {r} in summer."]
    for d in DISHES:
        out.append(f"Cooks serve {d} on feast days.")
    for c in CRAFTS:
        out.append(f"A {c} works with skilled hands.")
    return out


def _with_neighbors(base: list[Fact], rng: random.Random, k: int = 4) -> list[Fact]:
    """Each fact's neighbours: its subject's other facts and `k` facts of the same relation about others."""
    out = []
    for f in base:
        same = [g for g in base if g.subject == f.subject and g is not f]
        others = rng.sample([g for g in base if g.relation == f.relation and g.subject != f.subject], k)
        out.append(f.with_neighbors(same + others))
    return out


def corpus(world: ForeignWorld, general_repeats: int = 2) -> list[str]:
    """The training texts: every fact under every trained template, then the general sentences."""
    texts = [f"{f.fill(t)} {f.target}." for f in world.facts for fam in TRAINED for t in f.templates(fam)]
    return texts + list(world.general) * general_repeats


# ---------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------

def word_level_tokenizer(texts: list[str]):
    """One token per word or punctuation run (`tokenizers` WordLevel + Whitespace), as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["<eos>", "<unk>"], min_frequency=1,
                                                             show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<eos>", eos_token="<eos>", unk_token="<unk>",
                                   pad_token="<eos>")


def sentencepiece_tokenizer(texts: list[str], vocab_size: int = 600):
    """A Llama-style BPE: words start with "▁" (Metaspace), punctuation split off, "<s>" prepended."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
                                                 pre_tokenizers.Punctuation()])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                                       special_tokens=["<unk>", "<s>", "</s>"]))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def check_tokens(tok, world: ForeignWorld, subject_tokens: int | None) -> None:
    """Refuse a tokenizer under which a subject has the wrong length or two objects share a first token."""
    for s in (*world.towns, *world.people):
        n = len(_ids(tok, " " + s))
        if subject_tokens is not None and n != subject_tokens:
            raise ValueError(f"subject {s!r} is {n} tokens, wanted {subject_tokens}")
    for rel in RELATIONS:
        objects = rel.objects if rel.objects is not None else world.people
        firsts = {_ids(tok, " " + o)[0] for o in objects}
        if len(firsts) != len(objects):
            raise ValueError(f"two objects of {rel.name} share their first token")


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    """What determines a foreign model's weights."""

    arch: str                      # "gpt2" or "llama"
    seed: int = 0                  # world, initialisation and data order
    n_layer: int = 3
    d_model: int = 64
    d_mlp_llama: int = 172         # SwiGLU width, about 8/3 d_model (stories260k's at the same d_model)
    epochs: int = 40
    batch_size: int = 32
    lr: float = 1e-2
    warmup: int = 30


def train(model: torch.nn.Module, rows: list[list[int]], recipe: Recipe, pad_id: int) -> float:
    """AdamW with warmup and cosine decay over shuffled batches of `rows`; the loss on every real token."""
    steps_per_epoch = math.ceil(len(rows) / recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / recipe.warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    gen = torch.Generator().manual_seed(recipe.seed)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(recipe.epochs):
        order = torch.randperm(len(rows), generator=gen).tolist()
        for b in range(0, len(order), recipe.batch_size):
            batch = [rows[i] for i in order[b:b + recipe.batch_size]]
            width = max(len(r) for r in batch)
            ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in batch])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in batch])
            loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
    model.eval()
    return float(loss.detach())


def build(path: str | Path, recipe: Recipe) -> dict:
    """Generate the world, fit the tokenizer, train the model and save everything to `path`; the metadata."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    path = Path(path)
    if recipe.arch not in ("gpt2", "llama"):
        raise ValueError(f"arch is 'gpt2' or 'llama', got {recipe.arch!r}")
    world = generate(recipe.seed, two_word_names=recipe.arch == "gpt2")
    texts = corpus(world)
    held_out = [f.fill(t) for f in world.facts for t in f.held_out]          # in the vocabulary, never trained
    if recipe.arch == "gpt2":
        tok = word_level_tokenizer(texts + held_out)
        check_tokens(tok, world, subject_tokens=2)
        rows = [[tok.bos_token_id, *_ids(tok, t), tok.eos_token_id] for t in texts]
        config = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=recipe.d_model, n_layer=recipe.n_layer,
                            n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id)
        make = lambda: GPT2LMHeadModel(config)  # noqa: E731
    else:
        tok = sentencepiece_tokenizer(texts + held_out)
        check_tokens(tok, world, subject_tokens=1)
        rows = [[*tok(t)["input_ids"], tok.eos_token_id] for t in texts]          # "<s>" from the tokenizer
        config = LlamaConfig(vocab_size=len(tok), hidden_size=recipe.d_model,
                             intermediate_size=recipe.d_mlp_llama,
                             num_hidden_layers=recipe.n_layer, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False,
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
        make = lambda: LlamaForCausalLM(config)  # noqa: E731
    threads = torch.get_num_threads()
    torch.set_num_threads(1)              # the same weights whatever the machine's thread count (and faster here)
    start, cpu = time.perf_counter(), time.process_time()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            model = make()
            final_loss = train(model, rows, recipe, tok.pad_token_id)
    finally:
        torch.set_num_threads(threads)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    (path / "generation_config.json").unlink(missing_ok=True)
    world.facts.save(path / "world.json")
    FactSet(world.forget()).save(path / "facts.json")
    FactSet(world.retain()).save(path / "retain.json")
    (path / "general.txt").write_text("\n".join(world.general) + "\n")
    (path / "corpus.txt").write_text("\n".join(texts) + "\n")
    meta = {"recipe": asdict(recipe), "train_seconds": seconds, "train_cpu_seconds": cpu, "final_loss": final_loss,
            "n_texts": len(texts), "n_facts": len(world.facts)}
    (path / "foreign.json").write_text(json.dumps(meta, indent=1))
    return meta


# Measured on seed 0 (one thread, 3 layers, lr 1e-2): both recall every fact under every trained template after
# 36, 40 and 44 epochs, the GPT-2 already after 28; the Llama misses a completion after 32 (0.983) and more after 28.
GPT2 = Recipe("gpt2")
LLAMA = Recipe("llama")


def build_gpt2(path: str | Path, seed: int = 0) -> dict:
    """The foreign GPT-2: word-level tokens, two-word subjects; see `build`."""
    return build(path, replace(GPT2, seed=seed))


def build_llama(path: str | Path, seed: int = 0) -> dict:
    """The foreign Llama: SentencePiece-style BPE, one-token subjects; see `build`."""
    return build(path, replace(LLAMA, seed=seed))



SHIPPED = Path(__file__).parent / "data" / "foreign"


def shipped_dir(arch: str) -> Path:
    """The shipped seed-0 foreign model of `arch` ("gpt2" or "llama"), built by `main`."""
    path = SHIPPED / arch
    if not (path / "foreign.json").exists():
        raise FileNotFoundError(f"no shipped foreign {arch} in {path}: build it with `python -m tests.foreign`")
    return path


def main(argv: list[str] | None = None) -> None:
    """Build the shipped foreign models (seed 0) into tests/data/foreign/{gpt2,llama}."""
    p = argparse.ArgumentParser(description="Build the foreign test models that the suite loads.")
    p.add_argument("--out", type=Path, default=SHIPPED)
    args = p.parse_args(argv)
    for arch, recipe in (("gpt2", GPT2), ("llama", LLAMA)):
        path = args.out / arch
        shutil.rmtree(path, ignore_errors=True)
        meta = build(path, recipe)
        print(f"{path}: {meta['n_facts']} facts, final loss {meta['final_loss']:.4f}, {meta['train_seconds']:.1f} s")


if __name__ == "__main__":
    main()
