"""Golden numbers: Patil et al. 2023's deletion objectives and head-projection attack, and ROME's update.

Where the numbers come from: /work/scratch/ref19/REPORT.md sections A.3 and C.3 and its appendix
(`out/a_patil.json`, `out/c_rome_memit_alphaedit.json`). A colleague ran the reference lines verbatim on
the seeded inputs rebuilt below: Vaidehi99/InfoDeletionAttacks @ c23aeff (third_party/rome/compute_v.py
409-534, experiments/evaluate.py `get_metrics` 205-240, experiments/evaluate_wb_grad.py `get_metrics`
165-206) with `collect_logits` stubbed as softmax(seeded lens logits) and the model's output as seeded
logits; kmeng01/rome @ 0874014 (`SecondMoment`, compute_u.py 107-120, compute_v.py 137-142/166/181,
rome_main.py 117). The inputs here are those scripts' (`scripts/a_patil.py`, `c_rome_memit_alphaedit.py`),
so each test recomputes a reference number with excise's own functions.

Tolerances: float32 rounding on both sides (ours, the report's) times the conditioning of each number, plus what
the draws' last bits move it by: seeded torch.randn gives other last bits on another CPU kernel path
(ATEN_CPU_CAPABILITY), at most 15 eps32 apart (absolute) in a draw of 16 values or more; smaller draws take its
scalar path, the same everywhere. The bounds are far below the effects the tests tell apart (another k or
target, the KL's direction, the ridge: 1e-3 relative and up).
"""

from __future__ import annotations

import pytest
import torch

from excise.edit.rank_one import inverse_second_moment, rank_one_update
from excise.edit.rome import erase_loss, excise_kl, lens_entropy, margin_loss, rome_kl, rome_weight_decay, target_nll
from excise.verify.logit_lens import beyond, top_bottom_k
from tests.reference_inputs import REPORT_ROME_C

KL_FACTOR, V_WEIGHT_DECAY = 0.0625, 0.5        # hparams/ROME/*.json, README "--kl_factor .0625"
EPS32, V = torch.finfo(torch.float32).eps, 50
RANDN = 16 * EPS32                               # the draws' last bits (see above)
# A float32 log-softmax over V logits (|x| < 5): the draws move it by <= 2 RANDN (|d log p / dx|_1 <= 2), each side's
# rounding by <= 2 V eps32 (V eps32 for the sum of exps, the subtractions around it less than V eps32 more). Absolute
# on a log-probability, relative on a probability:
LOGP = 2 * RANDN + 2 * 2 * V * EPS32             # 2.8e-5
NORM8 = 2 * (8 + 4) * EPS32                      # |v| of 8 scalar-path draws, squared or divided: rounding, both sides


def near(value: float, err: float):
    """Within `err`, plus each side's last few (<= 16-term) reductions and the golden's 10-digit print."""
    return pytest.approx(value, rel=0, abs=err + (2 * 16 * EPS32 + 5e-10) * abs(value))


def kl_error(now: torch.Tensor, before: torch.Tensor) -> float:
    """KL = sum p (log p - log q) moves by <= LOGP (2 + max|log p - log q|) with its log-probabilities, and its own
    V-term sum by LOGP max|log p - log q| more (both sides); times KL_FACTOR."""
    return KL_FACTOR * LOGP * 2 * (1 + float((now - before).abs().max()))


@pytest.fixture(scope="module")
def defense():
    """The defense-loss case (REPORT A.3): 2 rewriting prompts + the KL prompt "{} is a", 4 lens layers."""
    torch.manual_seed(0)
    L, B, T, V, D = 4, 3, 5, 50, 8
    lens_logits = torch.randn(L, B, T, V)
    final_logits = torch.randn(B, T, V)
    init_kl_logits = torch.randn(1, V)
    delta, target_init = torch.randn(D), torch.randn(D)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    lookup = [2, 1, 1]
    last = mask.sum(1) - 1                                     # each row's last real position: [4, 3, 2]
    lens = torch.softmax(lens_logits, -1)[:, torch.arange(B), last]      # [layers, rows, vocab]
    kl_now, kl_init = torch.log_softmax(final_logits[2, lookup[2]], -1)[None], torch.log_softmax(init_kl_logits, 1)
    kl = KL_FACTOR * rome_kl(kl_now, kl_init)
    wd = V_WEIGHT_DECAY * rome_weight_decay(delta, target_init)

    def targets(ids):
        """compute_v.py:347-352: the target ids at positions [ex_len - len, ex_len) of each rewriting row."""
        grid = torch.full((2, T), -100)
        for i in range(2):
            n = int(mask[i].sum())
            grid[i, n - len(ids): n] = torch.tensor(ids)
        return grid

    return {"lens": lens, "final": final_logits, "kl": kl, "wd": wd, "targets": targets, "last": last,
            "kl_logp": (kl_now, kl_init),
            "reg_err": kl_error(kl_now, kl_init) + float(wd) * NORM8}


def test_regularizer_terms(defense):
    # kl_error's bound; wd's inputs are 8-value draws, so only rounding
    assert float(defense["kl"]) == near(0.06258686632, kl_error(*defense["kl_logp"]))
    assert float(defense["wd"]) == near(0.1571442336, 0.1571442336 * NORM8)


def test_erase(defense):
    # the NLL is a mean of log-probabilities, off by <= LOGP; exp(-NLL) turns that into a relative error
    nll = target_nll(defense["final"][:2], defense["targets"]([7]))
    erase = float(erase_loss(nll))
    assert float(nll.mean()) == near(4.237717628, LOGP)
    assert erase == near(0.01444051322, erase * LOGP)
    assert erase + float(defense["kl"] + defense["wd"]) == near(0.2341716141, erase * LOGP + defense["reg_err"])


@pytest.mark.parametrize(("k", "target", "top", "bottom", "loss"), [
    (4, 7, 0.009671553969, 0.0, 0.2294026464),
    (2, 7, 0.003968393896, 0.0, 0.2236994803),
    (4, 1, 0.0007032938302, 0.000119137032, 0.2205535173),   # the first id with both hinges > 0
])
def test_head_projection(defense, k, target, top, bottom, loss):
    # a hinge relu(p_t - p_(k)) moves by <= (p_t + p_(k)) LOGP: relu is 1-Lipschitz, and the k-th largest (smallest)
    # of values each off by <= LOGP relative is off by <= LOGP relative too
    lens = defense["lens"]
    ordered, p_t = lens.sort(-1).values, lens[..., target]
    top_err, bottom_err = (LOGP * float((p_t + ordered[..., i]).mean()) for i in (-k, k - 1))
    got_top, got_bottom = margin_loss(lens, target, k)
    assert float(got_top) == near(top, top_err) and float(got_bottom) == near(bottom, bottom_err)
    assert float(got_top + got_bottom + defense["kl"] + defense["wd"]) == near(   # no erase term
        loss, top_err + bottom_err + defense["reg_err"])


def test_head_projection_reads_the_reported_lens_probabilities(defense):
    expected = [[0.008250894956, 0.003357312176, 0.1024329662], [0.03446688876, 0.05685192347, 0.1062216982],
                [0.02871040255, 0.05223016068, 0.1195916235], [0.01716838777, 0.02897716314, 0.0330263488]]
    assert defense["last"].tolist() == [4, 3, 2]
    assert torch.allclose(defense["lens"][..., 7], torch.tensor(expected), rtol=LOGP + 5e-10, atol=0)   # probabilities


def test_max_entropy(defense):
    # H = -sum p log p moves by <= sum p |1 + log p| LOGP <= (1 + H) LOGP, and its V-term sum by 2 V eps32 H < H LOGP
    entropy = lens_entropy(defense["lens"])
    err = (1 + 2 * float(entropy)) * LOGP
    assert float(entropy) == near(3.464609146, err)
    assert float(-entropy + defense["kl"] + defense["wd"]) == near(-3.244878054, err + defense["reg_err"])


@pytest.mark.parametrize(("ids", "nll", "loss"), [([7], 4.237717628, 4.457448483),
                                                   ([7, 11], 3.941280365, 4.161011219)])
def test_rewrite_and_empty(defense, ids, nll, loss):
    """`empty` is this rewrite with target " dummy"; the NLL is the token mean per prompt (log-probabilities: LOGP)."""
    got = target_nll(defense["final"][:2], defense["targets"](ids)).mean()
    assert float(got) == near(nll, LOGP)
    assert float(got + defense["kl"] + defense["wd"]) == near(loss, LOGP + defense["reg_err"])


# -- the attack (REPORT A.3, "Inputs (attack)") -------------------------------

EXTRACTED = [0, 5, 6, 10, 14, 18, 21, 22, 23, 24, 26, 27, 29, 32, 33, 36, 37, 38, 40, 41, 43, 46, 47, 48, 49]
TOP = [0, 5, 6, 14, 22, 26, 27, 32, 33, 36, 37, 43, 47]
BOTTOM = [0, 6, 10, 18, 21, 23, 24, 29, 36, 38, 40, 41, 46, 48, 49]
DELTA = {"any": [0, 2, 5, 14, 22, 26, 27, 32, 33, 36, 37, 43, 48, 49],
         "top": [0, 2, 5, 14, 22, 26, 27, 32, 33, 36, 37, 43], "bottom": [5, 14, 22, 26, 27, 32, 33, 36, 43, 48, 49]}


@pytest.fixture(scope="module")
def attack_probs():
    torch.manual_seed(1)
    hidden_lens_logits = torch.randn(13, 1, 4, 50)       # lm_head(ln_f(hidden_states[i])), i = 0..12
    return torch.softmax(hidden_lens_logits, -1)[[3, 5, 8, 12], 0, -1]     # layers [3, 5, 8, 12], last position


def verdicts_hold(values: torch.Tensor, err: torch.Tensor, k: int) -> bool:
    """Whether every top-k and bottom-k verdict of every target in every row stays with each value off by up to its
    err: the count of values beyond the target is below k whichever way the close comparisons fall."""
    gap, slack = values[:, :, None] - values[:, None, :], err[:, :, None] + err[:, None, :]     # [row, other, target]
    for g in (gap, -gap):
        surely, maybe = (g > slack).sum(1), (g > -slack).sum(1) - 1        # - 1: the target itself
        if not torch.equal(surely < k, maybe < k):
            return False
    return True


def test_head_projection_attack(attack_probs):
    verdicts = {t: top_bottom_k(attack_probs, t, k=4) for t in range(50)}
    assert [t for t, (top, bottom) in verdicts.items() if top.any() or bottom.any()] == EXTRACTED
    assert [t for t, (top, _) in verdicts.items() if top.any()] == TOP
    assert [t for t, (_, bottom) in verdicts.items() if bottom.any()] == BOTTOM
    top, bottom = verdicts[7]
    assert not top.any() and not bottom.any()
    assert torch.allclose(attack_probs[:, 7], torch.tensor([0.003173586447, 0.02917927131, 0.00554317655,
                                                            0.01754800603]), rtol=LOGP + 5e-10, atol=0)
    # the rank statistic the audit keeps: extracted iff it is below k
    ranks = {t: min(int(a.min()), int(b.min())) for t in range(50) for a, b in [beyond(attack_probs, t)]}
    assert [t for t, r in ranks.items() if r < 4] == EXTRACTED
    # the lists hold on any machine: no verdict turns on probabilities closer than their LOGP (the closest
    # target is 2% from its 4th neighbour)
    assert verdicts_hold(attack_probs, LOGP * attack_probs, k=4)


def test_probability_delta_attack(attack_probs):
    verdicts = {t: top_bottom_k(attack_probs, t, k=4, delta=True) for t in range(50)}
    assert [t for t, (top, bottom) in verdicts.items() if top.any() or bottom.any()] == DELTA["any"]
    assert [t for t, (top, _) in verdicts.items() if top.any()] == DELTA["top"]
    assert [t for t, (_, bottom) in verdicts.items() if bottom.any()] == DELTA["bottom"]
    # a change p_(l+1) - p_l is off by <= (p_(l+1) + p_l) LOGP: no verdict turns on closer values
    assert verdicts_hold(attack_probs.diff(dim=0), LOGP * (attack_probs[1:] + attack_probs[:-1]), k=4)


def test_ties_count_as_extracted():
    """The reference compares with >=: a target tied with the k-th largest (or smallest) is in."""
    probs = torch.tensor([[0.4, 0.2, 0.2, 0.1, 0.1]])
    assert top_bottom_k(probs, 2, k=2)[0].item() and top_bottom_k(probs, 1, k=2)[0].item()
    assert top_bottom_k(probs, 4, k=1)[1].item() and not top_bottom_k(probs, 2, k=1)[0].item()


# -- ROME's update and its KL / weight-decay forms (REPORT C.3) -----------------

# The update starts from the report's C bits (tests.reference_inputs.REPORT_ROME_C), as the report's did, so only the
# two sides' rounding of the solve is left.
U = [0.07036253065, -0.1917284876, 0.8388864398, -0.1033217907, 0.002284089802, -0.1084890589, 0.4590573013,
     0.1462010443]
RIGHT = [-0.1093674302, 0.08232410997, -0.1110266745, 0.1953782737, -0.4737854302, 0.2601670921]
DW = [[-0.007695368957, 0.005792532582, -0.007812117692, 0.01374730933, -0.03333674371, 0.01830601506],
      [0.02096885256, -0.01578387618, 0.02128697559, -0.03745958209, 0.09083816409, -0.04988144338],
      [-0.0917468518, 0.06906057894, -0.09313876927, 0.1639001817, -0.3974521756, 0.2182506472],
      [0.01130003855, -0.008505874313, 0.01147147454, -0.02018683217, 0.04895235971, -0.02688092925],
      [-0.0002498050453, 0.0001880356576, -0.0002535948879, 0.0004462615179, -0.001082168426, 0.0005942449789],
      [0.01186516974, -0.008931265213, 0.01204517949, -0.02119640447, 0.05140053481, -0.02822528221],
      [-0.05020591617, 0.0377914831, -0.05096760392, 0.089689821, -0.2174946666, 0.1194316],
      [-0.01598963328, 0.01203587092, -0.01623221487, 0.02856450714, -0.06926792115, 0.03803670034]]


@pytest.fixture(scope="module")
def rome_case():
    torch.manual_seed(0)
    K, k = torch.randn(100, 8), torch.randn(8)
    torch.randn(8)                                  # k_bare (the report's second case; not used here)
    W, delta = torch.randn(8, 6), torch.randn(6)
    return K, k, W, delta


def update_errors(C: torch.Tensor, k: torch.Tensor, W: torch.Tensor, delta: torch.Tensor) -> tuple[float, float]:
    """Entrywise bounds on how far u = C^-1 k / |C^-1 k| and dW = rank_one_update(...) - W sit from the report's, both
    computed in float32 from the same C bits. x = C^-1 k carries kappa(C) 4d eps32 relative error per side (LU's
    backward error 3d eps32 |C|, the product's d eps32); u twice that (the normalization), plus |u|'s rounding.
    dW = x (v - W^T k)^T / (x . k) takes x's error again through x . k, times |x| |k| / |x . k|, and adds the rounding
    of v - W^T k (eps32 (|v| + |delta|) / |delta| relative), of the dot and the outer product ((d + 4) eps32) and of
    the round trip W + dW - W (2 eps32 |W + dW| per entry); k and delta are 8- and 6-value draws, the same bits
    everywhere, and W's draws enter only that rounding."""
    C, k64, d = C.double(), k.double(), len(k)
    x = torch.linalg.solve(C, k64)
    e_x = 2 * float(torch.linalg.cond(C)) * 4 * d * EPS32
    v = W.T @ k + delta
    e_dW = e_x * (1 + float(x.norm() * k64.norm() / (x @ k64).abs())) + 2 * EPS32 * (
        d + 4 + float((v.norm() + delta.norm()) / delta.norm()))
    dW = torch.outer(x, delta.double()) / (x @ k64)
    return 2 * e_x + 2 * (d + 2) * EPS32, e_dW * float(dW.norm()) + 4 * EPS32 * float((W.abs() + dW.abs()).max())


def test_rome_update_with_ridge_zero_is_rome(rome_case):
    K, k, W, delta = rome_case
    C = torch.tensor(REPORT_ROME_C)
    # the keys give the report's C (covariance.py: E[k k^T] over the sample): each side's sum of n products is off by
    # <= n eps32 |K|^T |K| / n (the summation bound), and the draws' RANDN moves it by RANDN (|K_i| + |K_j|) / n
    n, A = len(K), K.abs()
    assert ((K.T @ K / n - C).abs() <= (2 * n * EPS32 * A.T @ A + RANDN * (A.sum(0)[:, None] + A.sum(0))) / n).all()
    u_err, dW_err = update_errors(C, k, W, delta)                 # 5.3e-5 and 3.5e-5 here
    C_inv = inverse_second_moment(C, ridge=0.0)
    u = C_inv @ k
    assert torch.allclose(u / u.norm(), torch.tensor(U), rtol=0, atol=u_err)   # compute_u.py: C^-1 k / |C^-1 k|
    dW = rank_one_update(W, k, W.T @ k + delta, C_inv) - W
    assert torch.allclose(dW, torch.tensor(DW), rtol=0, atol=dW_err)
    right = dW[0] / (u / u.norm())[0]                       # ROME writes u right^T with u of norm 1
    u0 = abs(U[0])
    assert torch.allclose(right, torch.tensor(RIGHT), rtol=0, atol=(dW_err + max(map(abs, RIGHT)) * u_err) / u0)
    # excise's default ridge moves it by the report's 7.39e-4; C + ridge I is no worse conditioned than C, so each of
    # the two updates is off by <= dW_err (9% of the move: it still tells 1e-2 from 1e-3 or 2e-2)
    ridged = rank_one_update(W, k, W.T @ k + delta, inverse_second_moment(C, ridge=1e-2)) - W
    assert float((ridged - dW).abs().max()) == near(7.389970124e-4, 2 * dW_err)


def test_ridge_zero_on_a_singular_second_moment_warns():
    # 3 keys along 3 of the 8 axes: 5 eigenvalues exactly 1e-12, far below the floor eps32 max(eig) = 4e-8 (the
    # 1e-12 keeps the inverse finite). Random keys would leave eigenvalues at float32 noise, up to 0.7 of the floor.
    C = torch.eye(3, 8).T @ torch.eye(3, 8) / 3 + 1e-12 * torch.eye(8)
    with pytest.warns(UserWarning, match="numerically singular \\(rank 3 of 8"):
        inverse_second_moment(C, ridge=0.0)
    with pytest.raises(ValueError, match="ridge must be >= 0"):
        inverse_second_moment(C, ridge=-1.0)


def test_rome_kl_direction_and_weight_decay_form():
    torch.manual_seed(1)
    before = torch.log_softmax(torch.randn(1, 50), 1)
    now = torch.log_softmax(torch.randn(1, 50), 1)
    delta, target_init = torch.randn(8), torch.randn(8)
    # kl_error's bound for either direction; the rest comes from 8-value draws: rounding only (NORM8)
    kl_err = kl_error(now, before)
    assert float(KL_FACTOR * rome_kl(now, before)) == near(0.05852079019, kl_err)
    assert float(KL_FACTOR * excise_kl(now, before)) == near(0.0595901534, kl_err)      # the other direction
    assert float(V_WEIGHT_DECAY * rome_weight_decay(delta, target_init)) == near(0.1624097824, 0.1624097824 * NORM8)
    assert float(V_WEIGHT_DECAY * delta.norm() ** 2 / target_init.norm() ** 2) == near(0.3669056594, 0.367 * NORM8)
    assert float(4 * target_init.norm()) == near(10.54896832, 10.55 * NORM8)              # the clamp radius


# -- the attack on a model ----------------------------------------------------

def test_head_projection_attack_on_the_organism(organism_model, world):
    """Index n_layers is the model's own output; a recalled fact is extracted there (top-1), and the
    statistics agree with `top_bottom_k`'s definition."""
    from excise.scoring import encode, target_first_ids
    from excise.verify.logit_lens import default_attack_layers, head_projection_attack

    facts = list(world.sample(4, seed=3))
    n = organism_model.cfg.n_layers
    rows = head_projection_attack(organism_model, facts, layers=tuple(range(n + 1)))
    assert [r.layers for r in rows] == [tuple(range(n + 1))] * len(facts)
    for f, r in zip(facts, rows, strict=True):
        prompt = f.fill(f.prompt)
        tid = target_first_ids(organism_model, [prompt], [f.target])[0]
        with torch.no_grad():
            out = organism_model(torch.tensor(encode(organism_model, [prompt])))[0, -1].float().softmax(-1)
        # the same float32 forward, batched otherwise. p >= 0.979 here, so its relative error is <= 2 (1 - p) max|d
        # logit| < 0.05 max|d logit|: 1e-4 allows logits 2e-3 apart, 840 eps32 of max|logit| = 20, more than the
        # probabilistic rounding bound of 4 layers of 512-term sums (4 x 8 sqrt(512) eps32 = 720 eps32)
        assert r.p_target[-1] == pytest.approx(float(out[tid]), rel=1e-4)
        assert r.above[-1] == 0 and r.top_k[-1] and r.extracted and r.rank == 0
        assert all(a + b < organism_model.cfg.d_vocab for a, b in zip(r.above, r.below, strict=True))
    assert default_attack_layers(n) == tuple(range(1, n))
    with pytest.raises(ValueError, match="hidden-state indices in 0..4"):
        head_projection_attack(organism_model, facts, layers=(2, 5))
    deltas = head_projection_attack(organism_model, facts[:1], layers=(1, 2, 4), delta=True)
    assert deltas[0].layers == (2, 4) and len(deltas[0].above) == 2
