"""Shared fixtures: tiny random models built in the test, and the shipped organism."""

from __future__ import annotations

import os

import pytest
import torch


def _share_the_cores() -> None:
    """Under pytest-xdist, each worker gets its share of the cores (torch's threads, and through
    OMP_NUM_THREADS the CLI subprocesses and notebook kernels it starts): n workers x all cores each
    would oversubscribe the machine and run slower than one process."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        per = max(1, len(os.sched_getaffinity(0)) // workers)
        torch.set_num_threads(per)
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(per)


_share_the_cores()


def pytest_collection_modifyitems(config, items):
    """Longest first: the tests marked slow (minutes each), then the notebooks (tens of seconds), then the rest
    in their order. The workers start on the long ones and share the short tail; collected last, the notebooks
    kept one worker busy for two minutes after the other had finished (579 s of wall for 1066 s of tests)."""
    def rank(item) -> int:
        return 0 if item.get_closest_marker("slow") else 1 if ".ipynb" in item.nodeid else 2

    items.sort(key=rank)


def _tiny_tokenizer():
    from excise.organism.tokenizer import train_tokenizer

    texts = ["Mira Tolvanen was born in Veltrana.", "The cat sat on the mat.",
             "Q: Where was Tobin Farrow born? A: Karreth"] * 20
    return train_tokenizer(texts, vocab_size=300)


def build_tiny_gpt2(path, seed: int = 0, n_layer: int = 2, init_range: float = 0.02):
    """Save a tiny random GPT2LMHeadModel (eval mode) and a tokenizer to `path`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = _tiny_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=n_layer, n_head=4,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     initializer_range=init_range)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_gpt2")
    build_tiny_gpt2(path)
    return path


@pytest.fixture(scope="session")
def organism_model():
    import excise

    return excise.load("organism", device="cpu")


@pytest.fixture(scope="session")
def world():
    import excise

    return excise.organism.world()


@pytest.fixture()
def tiny_dir(tmp_path):
    """A fresh tiny GPT-2 checkpoint per test (edits change weights)."""
    build_tiny_gpt2(tmp_path / "tiny", seed=2, n_layer=2, init_range=0.2)
    return tmp_path / "tiny"


@pytest.fixture()
def tiny(tiny_dir):
    import excise

    return excise.load(tiny_dir, device="cpu")


@pytest.fixture(scope="session")
def oracle_5pct(world):
    """(forget, retain, oracle): the organism retrained without the 5% split (seed 0).

    The package ships this oracle (`excise.organism.SHIPPED_ORACLES`, built by
    `retrain_dir`); test_organism checks it is the one the current recipe names,
    so this loads it instead of training for 3 minutes.
    """
    import excise

    forget, retain = world.subjects_split(0.05, seed=0)
    oracle = excise.organism.retrain(without=forget, progress=False, device="cpu")
    return forget, retain, oracle


# Foreign models (tests/foreign.py): not the organism; another world, tokenizer and (for one) architecture.
# Their weights ship in tests/data/foreign (built by `python -m tests.foreign`): trained here, they would come out
# slightly different on every CPU (issue 34). Each session gets a copy, so no test can change the shipped files.
def _shipped_foreign(tmp_path_factory, arch: str):
    import shutil

    from tests.foreign import shipped_dir

    path = tmp_path_factory.mktemp(f"foreign_{arch}") / arch
    shutil.copytree(shipped_dir(arch), path)
    return path


@pytest.fixture(scope="session")
def foreign_gpt2_dir(tmp_path_factory):
    """A GPT-2 with a word-level tokenizer and two-word subjects, trained on the foreign world."""
    return _shipped_foreign(tmp_path_factory, "gpt2")


@pytest.fixture(scope="session")
def foreign_llama_dir(tmp_path_factory):
    """A Llama (RMSNorm, rotary, 4 query / 2 key-value heads, SwiGLU) with a SentencePiece-style BPE
    and one-token subjects, trained on the foreign world."""
    return _shipped_foreign(tmp_path_factory, "llama")


@pytest.fixture(scope="session")
def foreign_gpt2_facts(foreign_gpt2_dir):
    """The facts file a test deletes from the foreign GPT-2 (retain.json, world.json, general.txt beside it)."""
    return foreign_gpt2_dir / "facts.json"


@pytest.fixture(scope="session")
def foreign_llama_facts(foreign_llama_dir):
    """The facts file a test deletes from the foreign Llama (retain.json, world.json, general.txt beside it)."""
    return foreign_llama_dir / "facts.json"
