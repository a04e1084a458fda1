"""Causal tracing as ROME's reference code does it, and excise's earlier variant under its own name.

Where the golden numbers come from:
- ROME: kmeng01/rome at 0874014, experiments/causal_trace.py, run unmodified in a scratch
  directory (not part of excise). `collect_embedding_std` on a one-layer GPT2LMHeadModel whose
  wte is `W` below (random positional embeddings, to show they stay out) and a tokenizer that
  encodes each subject to the token lists below; `trace_important_window` with `trace_with_patch`
  replaced by a recorder of the layers each call restores.
- excise's earlier behaviour (noise over all of W_E, the window shifted up near layer 0): excise
  at ee15fff, before the reference became the default, on the tiny model of `tiny` below.

Tolerances come from float32 rounding on both sides times each number's conditioning (see `std_rtol` and
`log_p_errors`), plus what the draws' last bits move it by: seeded torch.randn (and the model's normal_ init)
gives other last bits on another CPU kernel path (ATEN_CPU_CAPABILITY), at most 15 eps32 apart.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

import excise
from excise import Fact
from excise.locate import TraceConfig, activation_patching, attribution_patching, causal_trace
from excise.locate.causal_trace import _setup, noise_std, trace_one_at_a_time, trace_plans, window_layers
from excise.locate.interventions import embedding_std, is_noop, subject_embeddings, token_embedding_std
from tests.conftest import build_tiny_gpt2

FACT = Fact("Mira Tolvanen", "birthplace", "Veltrana", "{} was born in",
            paraphrases=("The cat sat on the mat near {}",))
EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_reference")
    build_tiny_gpt2(path, seed=1, n_layer=3, init_range=0.3)
    return excise.load(path, device="cpu")


# ---------------------------------------------------------------------------- the noise unit

W = (((torch.arange(24) * 7) % 11) - 5).float().reshape(6, 4) / 4        # exact in float32
SUBJECT_IDS = {"a": [1, 2], "b": [3], "c": [2, 5, 5], "e": [0, 4, 1, 3]}
# collect_embedding_std(mt, subjects) of the reference, per list of subjects
ROME_STD = {"a": 0.8121564984321594, "b,c": 0.8226924538612366, "a,b,c": 0.8030738234519958,
            "a,c,c": 0.801295280456543, "a,b,c,e": 0.7994138598442078}


def std_rtol(rows) -> float:
    """A float32 std of n values on each side (ours, ROME's): the variance's n-term sum is off by <= (n + 2) eps32
    relative (the summation bound; the mean's error enters only at second order), the division and the sqrt,
    which halves it, add 2 eps32: (n + 6) eps32 for the two (1.7e-6 to 5.5e-6 here)."""
    return (sum(r.numel() for r in rows) + 6) * EPS32


@pytest.mark.parametrize("subjects", list(ROME_STD))
def test_subject_std_matches_rome(subjects):
    rows = [W[SUBJECT_IDS[s]] for s in subjects.split(",")]        # exact in float32: no draws
    assert token_embedding_std(rows) == pytest.approx(ROME_STD[subjects], rel=std_rtol(rows))


def test_subject_std_counts_repeats_and_takes_one_global_mean():
    rows = [W[[1, 2]], W[[2, 5, 5]], W[[2, 5, 5]]]          # "a", "c", "c": repeats weigh in
    # std_rtol's bound (5e-6); leaving the repeat out moves the std by 2.6e-3
    assert token_embedding_std(rows) == pytest.approx(ROME_STD["a,c,c"], rel=std_rtol(rows))
    once = token_embedding_std([W[[1, 2]], W[[2, 5, 5]]])
    assert token_embedding_std(rows) != pytest.approx(once, rel=std_rtol(rows))
    flat = torch.cat(rows).flatten().double()
    assert token_embedding_std(rows) == pytest.approx(float(flat.std(correction=1)), rel=std_rtol(rows))


def test_subject_embeddings_are_the_token_rows_of_the_bare_subject(tiny):
    ids = tiny.to_tokens("Mira Tolvanen", prepend_bos=False)[0]
    [rows] = subject_embeddings(tiny, ["Mira Tolvanen"])
    assert torch.equal(rows, tiny.embed.W_E[ids])           # token embeddings: no BOS, no positions


def test_trace_records_the_unit_and_what_it_came_from(tiny):
    own = causal_trace(tiny, FACT, kinds=("mlp",), n_samples=2)
    n_own = tiny.to_tokens(FACT.subject, prepend_bos=False).shape[1]
    sigma = token_embedding_std(subject_embeddings(tiny, [FACT.subject]))
    assert own.meta["noise_scale"] == "subjects" and own.meta["window_edge"] == "truncate"
    assert own.meta["noise_sigma"] == pytest.approx(sigma)
    assert own.meta["noise_std"] == pytest.approx(3 * sigma)
    assert (own.meta["noise_sigma_tokens"], own.meta["noise_sigma_subjects"]) == (n_own, 1)

    many = [FACT.subject, "Tobin Farrow", FACT.subject]
    shared = causal_trace(tiny, FACT, kinds=("mlp",), n_samples=2, subjects=many)
    n_many = sum(tiny.to_tokens(s, prepend_bos=False).shape[1] for s in many)
    assert (shared.meta["noise_sigma_tokens"], shared.meta["noise_sigma_subjects"]) == (n_many, 3)
    assert shared.meta["noise_sigma"] == pytest.approx(token_embedding_std(subject_embeddings(tiny, many)))
    # the other methods that noise the subject take the same unit
    patch = activation_patching(tiny, FACT, ("mlp",), n_samples=2, subjects=many)
    attr = attribution_patching(tiny, FACT, ("mlp",), n_samples=2, subjects=many)
    assert patch.meta["noise_std"] == attr.meta["noise_std"] == shared.meta["noise_std"]


def test_one_at_a_time_takes_the_same_subjects(tiny):
    cfg = TraceConfig(n_samples=2, window=2)
    many = [FACT.subject, "Tobin Farrow"]
    batched = causal_trace(tiny, FACT, kinds=("mlp",), config=cfg, subjects=many)
    loop = trace_one_at_a_time(tiny, FACT, kinds=("mlp",), config=cfg, subjects=many)
    assert torch.allclose(batched.scores["mlp"], loop["mlp"], atol=1e-5)


# ---------------------------------------------------------------------------- the window

def _spans(n_layers: int, window: int, edge: str) -> list[tuple[int, int]]:
    spans = []
    for layer in range(n_layers):
        r = window_layers(layer, window, n_layers, edge)
        assert r.step == 1
        spans.append((r.start, r.stop))
    return spans


# [start, stop) of the layers trace_important_window restores, per center layer
ROME_WINDOWS = {
    (12, 10): [(0, 5), (0, 6), (0, 7), (0, 8), (0, 9), (0, 10), (1, 11), (2, 12), (3, 12), (4, 12), (5, 12), (6, 12)],
    (12, 1): [(L, L + 1) for L in range(12)],
    (12, 2): [(0, 1)] + [(L - 1, L + 1) for L in range(1, 12)],
    (12, 3): [(0, 2), (0, 3), (1, 4), (2, 5), (3, 6), (4, 7), (5, 8), (6, 9), (7, 10), (8, 11), (9, 12), (10, 12)],
    (12, 4): [(0, 2), (0, 3), (0, 4), (1, 5), (2, 6), (3, 7), (4, 8), (5, 9), (6, 10), (7, 11), (8, 12), (9, 12)],
    (12, 5): [(0, 3), (0, 4), (0, 5), (1, 6), (2, 7), (3, 8), (4, 9), (5, 10), (6, 11), (7, 12), (8, 12), (9, 12)],
    (5, 10): [(0, 5)] * 5,
    (48, 10): [(0, 5), (0, 6), (0, 7), (0, 8), (0, 9), (0, 10)] + [(L - 5, L + 5) for L in range(6, 43)]
              + [(38, 48), (39, 48), (40, 48), (41, 48), (42, 48)],
}
# excise's earlier _window (ee15fff)
SHIFTED_WINDOWS = {
    (12, 10): [(0, 10)] * 6 + [(1, 11), (2, 12), (3, 12), (4, 12), (5, 12), (6, 12)],
    (12, 3): [(0, 3), (0, 3), (1, 4), (2, 5), (3, 6), (4, 7), (5, 8), (6, 9), (7, 10), (8, 11), (9, 12), (10, 12)],
    (12, 4): [(0, 4), (0, 4), (0, 4), (1, 5), (2, 6), (3, 7), (4, 8), (5, 9), (6, 10), (7, 11), (8, 12), (9, 12)],
    (5, 10): [(0, 5)] * 5,
}


@pytest.mark.parametrize("case", list(ROME_WINDOWS))
def test_truncated_window_matches_rome(case):
    assert _spans(*case, "truncate") == ROME_WINDOWS[case]


@pytest.mark.parametrize("case", list(SHIFTED_WINDOWS))
def test_shifted_window_is_the_earlier_one(case):
    assert _spans(*case, "shift") == SHIFTED_WINDOWS[case]


def test_trace_plans_follow_the_edge():
    plans = trace_plans("mlp", n_layers=12, n_pos=1, window=10, edge="truncate")
    assert [rs.hook for rs in plans[0]] == [f"blocks.{l}.hook_mlp_out" for l in range(5)]
    assert len(trace_plans("mlp", 12, 1, 10, edge="shift")[0]) == 10
    assert all(len(p) == 1 for p in trace_plans("resid", 12, 1, 10))      # resid: one layer at a time


# ---------------------------------------------------------------------------- the earlier behaviour

# excise at ee15fff: causal_trace(tiny, FACT, config=TraceConfig(n_samples=2, window=3))
OLD_NOISE_STD = 0.9129672646522522
OLD_P_CORRUPT = 0.0006146884988993406
OLD_MLP = [
    [0.000614688, 0.000695615, 0.00060015, 0.00054585, 0.000665413, 0.000754563, 0.000705823, 0.000582799,
     0.000667893, 0.000216825],
    [0.000614688, 0.000695615, 0.00060015, 0.00054585, 0.000665413, 0.000754563, 0.000705823, 0.000582799,
     0.000667893, 0.000216825],
    [0.000614688, 0.000630194, 0.000625969, 0.00060791, 0.000610462, 0.000595687, 0.00060457, 0.000626863,
     0.000661883, 0.00022992],
]
LAMBDA = 8          # probabilistic rounding bounds below fail with probability <= 2 exp(-LAMBDA^2 / 2) = 3e-14


def log_p_errors(model, config: TraceConfig, noise_std_ref: float) -> torch.Tensor:
    """How far log p may move between two machines, for the corrupted run and then each mlp plan of `config`'s trace
    of FACT ([1 + n_layers * n_pos]). First order, g the gradient of log p with respect to the weights theta and the
    noise, the errors independent (Higham & Mary 2019: a sum of independent rounding errors stays within LAMBDA of
    its standard deviation but for probability 2 exp(-LAMBDA^2 / 2)):
    - float32 rounding on each side: every weight as if off by sqrt(n) eps32, n = d_vocab the longest sum, and the
      final log-softmax by as much: LAMBDA sqrt(2 n) eps32 (|g theta|_2 + 1);
    - the draws' last bits, 16 eps32 times their scale (the init's 0.3, the noise's std):
      LAMBDA 16 eps32 (0.3 |g_theta|_2 + std |g_noise|_2);
    - the noise std's difference from the reference's, shared by every draw: |log(std / std_ref)| |g_noise . noise|.
    """
    setup = _setup(model, FACT, None, config, None)
    tokens, metric, std = setup["tokens"], setup["metric"], setup["noise_info"]["noise_std"]
    noise = setup["noise"].requires_grad_()
    theta = [p.requires_grad_() for p in model.parameters()]
    n_layers, last = model.cfg.n_layers, len(tokens) - 1
    plans = [[]] + trace_plans("mlp", n_layers, len(tokens), config.window, config.window_edge)
    clean = {}

    def keep(act, hook, name):
        clean[name] = act
        return act

    def put(act, hook, name, pos):
        act = act.clone()
        act[:, pos] = clean[name][0, pos]
        return act

    errors = []
    with torch.enable_grad():
        names = {rs.hook for plan in plans for rs in plan}
        model.run_with_hooks(tokens[None], fwd_hooks=[(h, partial(keep, name=h)) for h in names])
        for plan in plans:
            if plan and is_noop(plan, setup["subject"][0], n_layers, last):    # the trace gives it the corrupted run
                errors.append(errors[0])
                continue
            fwd = [("hook_embed", lambda act, hook: act + noise)]
            fwd += [(rs.hook, partial(put, name=rs.hook, pos=rs.position)) for rs in plan]
            log_p = metric(model.run_with_hooks(tokens[None].expand(config.n_samples, -1), fwd_hooks=fwd)).mean().log()
            g_noise, *g = torch.autograd.grad(log_p, [noise, *theta], retain_graph=True, allow_unused=True)
            with torch.no_grad():
                g, w = zip(*((gi.flatten(), (gi * p).flatten())
                             for gi, p in zip(g, theta, strict=True) if gi is not None))
                errors.append(LAMBDA * (2 * model.cfg.d_vocab) ** 0.5 * EPS32 * (float(torch.cat(w).norm()) + 1)
                              + LAMBDA * 16 * EPS32 * (0.3 * float(torch.cat(g).norm()) + std * float(g_noise.norm()))
                              + abs(math.log(std / noise_std_ref)) * float((g_noise * noise).sum().abs()))
    return torch.tensor(errors)


def test_vocabulary_and_shift_reproduce_the_earlier_trace(tiny):
    old = TraceConfig(n_samples=2, window=3, noise_scale="vocabulary", window_edge="shift")
    trace = causal_trace(tiny, FACT, config=old)
    # a float32 std of N = 300 x 32 entries, both sides: LAMBDA sqrt(2 N) eps32 (probabilistic, as below), plus the
    # draws' 16 eps32 x 0.3 on each entry, which moves the std by as much (1.3e-4)
    n = tiny.embed.W_E.numel()
    assert trace.meta["noise_std"] == pytest.approx(OLD_NOISE_STD, rel=LAMBDA * (2 * n) ** 0.5 * EPS32 + 16 * EPS32)
    assert trace.meta["noise_std"] == 3 * embedding_std(tiny)          # the same float arithmetic
    assert trace.meta["noise_sigma_tokens"] == tiny.embed.W_E.shape[0]
    # log_p_errors' bounds (2.4e-4 to 3.9e-4 here), as relative errors of p; OLD_MLP's 6 digits add 5e-10
    rtol = log_p_errors(tiny, old, OLD_NOISE_STD).expm1()
    assert trace.meta["p_corrupt"] == pytest.approx(OLD_P_CORRUPT, rel=float(rtol[0]))
    want = torch.tensor(OLD_MLP)
    assert ((trace.scores["mlp"] - want).abs() <= rtol[1:].view(want.shape) * want + 5e-10).all()
    # the reference window restores layers 0-1 (not 0-2) at layer 0: a different first row (up to 42% apart, 1000x
    # the bound), the same others
    ref = causal_trace(tiny, FACT, config=TraceConfig(n_samples=2, window=3, noise_scale="vocabulary"))
    assert torch.allclose(ref.scores["mlp"][1:], trace.scores["mlp"][1:], rtol=float(rtol.max()), atol=0)
    assert not torch.allclose(ref.scores["mlp"][0], trace.scores["mlp"][0], rtol=float(rtol.max()), atol=0)


# ---------------------------------------------------------------------------- errors

def test_bad_settings_name_the_choices(tiny):
    with pytest.raises(ValueError, match="noise_scale must be one of .*'subjects', 'vocabulary'.* got 'all'"):
        TraceConfig(noise_scale="all")
    with pytest.raises(ValueError, match="window_edge must be one of .*'truncate', 'shift'.* got 'clip'"):
        TraceConfig(window_edge="clip")
    with pytest.raises(ValueError, match="edge must be one of"):
        window_layers(0, 3, 12, "clip")
    with pytest.raises(ValueError, match="non-empty list of subjects.*pass subjects="):
        causal_trace(tiny, FACT, n_samples=1, subjects="Mira Tolvanen")
    with pytest.raises(ValueError, match="non-empty list of subjects"):
        noise_std(tiny, TraceConfig(), [])
    with pytest.raises(TypeError, match="pass \\['Mira'\\]"):
        subject_embeddings(tiny, "Mira")
    with pytest.raises(ValueError, match="at least one subject"):
        token_embedding_std([])
