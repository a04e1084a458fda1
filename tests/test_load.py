"""excise.load on every kind of spec, and its errors."""

from __future__ import annotations

import pytest
import torch

import excise
from excise.models import ModelLoadError
from tests.conftest import build_tiny_gpt2


def test_local_dir_logits_match_hugging_face(tmp_path):
    hf_model, tok = build_tiny_gpt2(tmp_path, seed=3)
    bridge = excise.load(tmp_path, device="cpu")
    tokens = bridge.to_tokens("Mira Tolvanen was born in Veltrana.")
    with torch.no_grad():
        ours = bridge(tokens)
        theirs = hf_model(tokens).logits
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def test_module_with_tokenizer_matches(tmp_path):
    hf_model, tok = build_tiny_gpt2(tmp_path, seed=4)
    bridge = excise.load(hf_model, tokenizer=tok, device="cpu")
    tokens = bridge.to_tokens("The cat sat on the mat.")
    with torch.no_grad():
        assert torch.allclose(bridge(tokens), hf_model(tokens).logits, atol=1e-4)


def test_module_without_tokenizer_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(ModelLoadError, match="tokenizer="):
        excise.load(model)


def test_plain_module_is_refused():
    with pytest.raises(ModelLoadError, match="no Hugging Face .config"):
        excise.load(torch.nn.Linear(2, 2))


def test_organism_loads_as_bridge(organism_model):
    from transformer_lens.model_bridge import TransformerBridge

    assert isinstance(organism_model, TransformerBridge)
    assert organism_model.cfg.n_layers == excise.organism.recipe().n_layer
    assert not organism_model.training


def test_unknown_name_names_the_fix():
    with pytest.raises(ModelLoadError, match="unknown model 'gpt-two-thousand'.*path/to/dir"):
        excise.load("gpt-two-thousand")


def test_offline_hub_name_fails_fast_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # nothing cached
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import excise.models as models

    def no_cache(*a, **k):
        raise FileNotFoundError("not cached")

    monkeypatch.setattr("huggingface_hub.snapshot_download", no_cache)
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache.*excise.load\\('path/to/dir'\\)"):
        models.load("gpt2")


def test_hub_unreachable_detected(monkeypatch):
    import excise.models as models

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    assert models._hub_reachable(timeout=1.0) is False


def test_dir_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        excise.load(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(ModelLoadError, match="no checkpoint directory"):
        excise.load(str(tmp_path / "nope"))


def test_fingerprint_changes_with_weights(tmp_path):
    build_tiny_gpt2(tmp_path, seed=5)
    a = excise.load(tmp_path, device="cpu")
    before = excise.fingerprint(a)
    assert before == excise.fingerprint(a)
    with torch.no_grad():
        next(iter(a.parameters()))[0].add_(1.0)
    assert excise.fingerprint(a) != before


def test_device_map_goes_through_accelerate_and_gives_the_same_model(tmp_path):
    """`device_map` (Accelerate's placement, as transformers takes it) is passed to the bridge; on a machine
    with only a CPU, "auto" places every block there and the logits are the plain load's, bit for bit."""
    build_tiny_gpt2(tmp_path, seed=3)
    plain = excise.load(tmp_path)
    tokens = plain.to_tokens("Mira Tolvanen was born in Veltrana.")
    for device_map in ("auto", {"": "cpu"}):
        placed = excise.load(tmp_path, device_map=device_map, dtype=torch.bfloat16)
        assert {p.dtype for p in placed.parameters()} == {torch.bfloat16}
        with torch.no_grad():           # bit for bit: the same weights through the same kernels in one process
            assert torch.equal(placed(tokens), excise.load(tmp_path, dtype=torch.bfloat16)(tokens))
    with pytest.raises(ModelLoadError, match="give one"):
        excise.load(tmp_path, device="cpu", device_map="auto")
    with pytest.raises(ModelLoadError, match="pass device_map"):
        excise.load(tmp_path, max_memory={"cpu": "1GiB"})
