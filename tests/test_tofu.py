"""TOFU: the shipped splits, and TOFU's metrics on whole answers, on a few rows (seconds).

The metrics' parity with TOFU's own code on TOFU's released eval logs is in
test_tofu_reference.py; here: the maths by hand and the model-facing values.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
from scipy.stats import hmean

import excise
from excise import generation, tofu
from excise.scoring import encode


@pytest.fixture(scope="module")
def llama():
    return excise.load("stories260k")         # a 512-token context holds TOFU's questions and answers


def test_splits_are_nested_and_named_by_author():
    f01, f05, f10 = (tofu.load(s) for s in ("forget01", "forget05", "forget10"))
    assert (len(f01), len(f05), len(f10)) == (40, 200, 400)
    assert {q.question for q in f01} <= {q.question for q in f05} <= {q.question for q in f10}
    assert sorted({q.author for q in f01}) == ["Basil Mahfouz Al-Kuwaiti", "Nikolai Abilov"]
    assert all(len(q.perturbed_answers) == 5 and q.paraphrased_answer for q in f10)
    retain = tofu.load("retain90")
    # 180 authors; one never names itself in its 20 rows ("the fictitious author"), so it has no name here
    assert len(retain) == 3600 and len({q.author for q in retain} - {None}) == 179
    assert sum(q.author is None for q in retain) == 20
    assert not {q.author for q in retain} & {q.author for q in f10}
    assert len(tofu.retain_for("forget01")) == 4000 - 40


def test_facts_are_the_questions_naming_their_author():
    qas = tofu.load("forget01")
    facts = tofu.as_facts(qas)
    assert 30 <= len(facts) < len(qas)
    for f in facts:
        assert "{}" in f.prompt and f.prompt.startswith("Question: ") and f.prompt.endswith("\nAnswer:")
        assert f.fill(f.prompt) in {q.prompt for q in qas}
        assert f.target in {q.answer for q in qas} and len(f.target.split()) > 2      # whole answers


def test_bad_input_is_explained(tmp_path, organism_model):
    with pytest.raises(ValueError, match="unknown TOFU split 'forget50'.*forget05"):
        tofu.load("forget50")
    with pytest.raises(FileNotFoundError, match="pass path="):
        tofu.load("forget01", path=tmp_path)
    with pytest.raises(ValueError, match="retain_for takes a forget split"):
        tofu.retain_for("retain90")
    with pytest.raises(ValueError, match="context"):        # the organism's context is shorter than the rows
        tofu.answer_probability(organism_model, tofu.load("forget01")[:2])
    with pytest.raises(ValueError, match="no perturbed answers"):
        tofu.truth_ratio(organism_model, tofu.load("retain90")[:1])
    f01 = tofu.load("forget01")
    with pytest.raises(ValueError, match=r"\[3, 5\] perturbed answers.*separately"):
        tofu.truth_ratio(organism_model, [f01[0], replace(f01[1], perturbed_answers=f01[1].perturbed_answers[:3])])
    with pytest.raises(ValueError, match="max_length and max_new_tokens must be >= 1"):
        tofu.greedy_answers(organism_model, f01[:1], max_new_tokens=0)
    with pytest.raises(ValueError, match="lacks.*avg_gt_loss.*eval_"):
        tofu.SplitEval.from_log({"rougeL_recall": {}})


def test_the_aggregation_by_hand():
    L = np.log                               # losses from chosen probabilities: L = -log p
    # two questions, two perturbed answers each
    e = tofu.SplitEval(answer_loss=-L(np.array([0.5, 0.2])), paraphrased_loss=-L(np.array([0.4, 0.1])),
                       perturbed_loss=-L(np.array([[0.1, 0.4], [0.2, 0.2]])), rouge_l=np.array([1.0, 0.5]))
    # R: the paraphrase's probability over the GEOMETRIC mean of the perturbed ones (0.2 and 0.2), not 0.25 and 0.2
    np.testing.assert_allclose(e.truth_ratio, [0.4 / 0.2, 0.1 / 0.2])
    np.testing.assert_allclose(tofu.choice_probability_of_losses(e.answer_loss, e.perturbed_loss),
                               [0.5 / 1.0, 0.2 / 0.6])
    assert tofu.truth_score(e.truth_ratio) == pytest.approx((0.5 + 0.0) / 2)          # max(0, 1 - 1/R)
    assert tofu.truth_score(e.truth_ratio, forget=True) == pytest.approx((0.5 + 0.5) / 2)   # min(R, 1/R)
    assert tofu.split_scores(e, "retain") == pytest.approx({"probability": 0.35, "rouge_l": 0.75, "truth_score": 0.25})
    assert tofu.split_scores(e, "forget") == pytest.approx({"probability": 0.35, "rouge_l": 0.75, "truth_score": 0.5})
    assert tofu.split_scores(e, "world_facts")["probability"] == pytest.approx((0.5 + 1 / 3) / 2)
    parts = tofu.utility_of(e, e, e)
    nine = [v for k, v in parts.items() if k != "utility"]
    assert len(nine) == 9 and parts["utility"] == pytest.approx(9 / sum(1 / v for v in nine))
    with pytest.raises(ValueError, match="split must be one of"):
        tofu.split_scores(e, "retain90")


def test_rouge_l_is_recall_with_tofus_stemmer():
    assert tofu.rouge_l(["the dogs were running"], ["The dog runs"])[0] == 1.0     # no stemmer: 1/3
    assert tofu.rouge_l(["Paris."], ["The Eiffel Tower is in Paris"])[0] == pytest.approx(1 / 6)
    assert tofu.rouge_l([], []).shape == (0,)


def test_answer_loss_is_the_mean_nll_of_the_answer_and_its_eos(llama):
    q = tofu.load("forget01")[0]
    prompt = llama.to_tokens(q.prompt)[0].tolist()
    answer = llama.tokenizer(f" {q.answer}", add_special_tokens=False)["input_ids"] + [llama.tokenizer.eos_token_id]
    tokens = torch.tensor([prompt + answer])
    with torch.no_grad():
        logp = llama(tokens).log_softmax(-1)[0, :-1].double()
    nll = -logp.gather(-1, tokens[0, 1:, None])[len(prompt) - 1:, 0]
    assert len(nll) == len(answer)
    loss = tofu.answer_losses(llama, [q.prompt], [q.answer])
    assert loss[0] == pytest.approx(float(nll.mean()), rel=1e-5)
    assert tofu.answer_probability(llama, [q])[0] == pytest.approx(float(torch.exp(-nll.mean())), rel=1e-5)


def test_truth_ratio_is_tofus_ratio_of_answer_losses(llama):
    rows = tofu.load("forget01")[:4]
    same = [replace(q, perturbed_answers=(q.paraphrased_answer,) * 3) for q in rows]
    assert np.allclose(tofu.truth_ratio(llama, same), 1.0, atol=1e-5)
    r = tofu.truth_ratio(llama, rows)
    assert (r > 0).all() and not np.allclose(r, 1.0)
    para = tofu.answer_losses(llama, [q.prompt for q in rows], [q.paraphrased_answer for q in rows])
    pert = np.array([tofu.answer_losses(llama, [q.prompt] * 5, list(q.perturbed_answers)) for q in rows])
    np.testing.assert_allclose(r, np.exp(pert.mean(1) - para), rtol=1e-5)
    arithmetic = np.exp(-para) / np.exp(-pert).mean(1)        # the paper's prose (inverted): not what TOFU computes
    assert not np.allclose(r, arithmetic, rtol=1e-3)
    # a row with the answer as its perturbed answers: R > 1 exactly when the paraphrase is likelier than the answer
    ans = tofu.answer_losses(llama, [q.prompt for q in rows], [q.answer for q in rows])
    flipped = tofu.truth_ratio(llama, [replace(q, perturbed_answers=(q.answer,) * 2) for q in rows])
    np.testing.assert_allclose(flipped, np.exp(ans - para), rtol=1e-5)
    p = tofu.choice_probability(llama, [replace(q, perturbed_answers=(q.answer,) * 3) for q in rows])
    assert np.allclose(p, 1 / 4, atol=1e-5)


def test_forget_quality_is_symmetric_and_one_against_itself(llama):
    a = tofu.truth_ratio(llama, tofu.load("forget01")[:6])
    b = tofu.truth_ratio(llama, tofu.load("forget01")[6:12])
    assert tofu.forget_quality(a, a) == 1.0
    assert tofu.forget_quality(a, b) == tofu.forget_quality(b, a)
    assert tofu.forget_quality(a, a * 100) < 0.01


def test_greedy_answers_follow_tofus_length_budget_and_fit_the_context(llama, monkeypatch):
    rows = tofu.load("forget01")[:6]
    prompts = [q.prompt for q in rows]
    n = [len(r) for r in encode(llama, prompts)]
    monkeypatch.setattr(llama.cfg, "n_ctx", 100)     # prompt + 200 does not fit: each budget is cut to 100 - n
    assert max(n) > min(n)      # the shortest prompt's budget does not fit beside the longest: decoded apart

    def alone(p: str, budget: int) -> str:
        return llama.tokenizer.decode(generation.greedy(llama, [p], budget)[0], skip_special_tokens=True).strip()

    said = tofu.greedy_answers(llama, rows)
    assert said == [alone(p, 100 - m) for p, m in zip(prompts, n, strict=True)]
    assert any("\n" in s for s in said)                  # TOFU cuts no answer at a newline
    short = tofu.greedy_answers(llama, rows, max_length=60)          # 60 tokens in all, the prompt included
    assert short == [alone(p, 60 - m) if m < 60 else "" for p, m in zip(prompts, n, strict=True)]
    assert "" in short and any(short)
    assert tofu.greedy_answers(llama, rows, max_new_tokens=3) == [alone(p, 3) for p in prompts]


def test_rouge_l_recall_of_the_models_own_answer_is_one(llama):
    rows = tofu.load("forget01")[:3]
    said = tofu.greedy_answers(llama, rows, max_new_tokens=12)
    own = [replace(q, answer=s) for q, s in zip(rows, said, strict=True) if s]
    assert own and np.allclose(tofu.rouge_l_recall(llama, own, max_new_tokens=12), 1.0)
    assert (tofu.rouge_l_recall(llama, rows, max_new_tokens=12) < 0.5).all()     # it never saw TOFU


def test_model_utility_is_the_harmonic_mean_of_nine_numbers(llama):
    parts = tofu.model_utility(llama, tofu.load("retain_perturbed")[:3], tofu.load("real_authors")[:3],
                               tofu.load("world_facts")[:3], max_new_tokens=8)
    nine = {k: v for k, v in parts.items() if k != "utility"}
    assert set(nine) == {f"{s}_{k}" for s in ("retain", "real_authors", "world_facts")
                         for k in ("probability", "rouge_l", "truth_score")}
    assert all(0 <= v <= 1 for v in nine.values())
    assert parts["utility"] == pytest.approx(float(hmean(list(nine.values()))), rel=1e-12)
    assert min(nine.values()) - 1e-9 <= parts["utility"] <= np.mean(list(nine.values()))


def test_evaluate_holds_the_values_tofu_logs(llama):
    rows = tofu.load("real_authors")[:3]
    e = tofu.evaluate(llama, rows, max_new_tokens=4)
    # the same forwards in one process, two routes: only float32 rounding of the loss (~eps32 x |loss| <= 1e-6)
    np.testing.assert_allclose(np.exp(-e.answer_loss), tofu.answer_probability(llama, rows), rtol=1e-6)
    np.testing.assert_array_equal(e.answer_loss, e.paraphrased_loss)        # no paraphrase: the answer stands in
    assert e.perturbed_loss.shape == (3, len(rows[0].perturbed_answers))
    np.testing.assert_allclose(e.truth_ratio, tofu.truth_ratio(llama, rows), rtol=1e-6)
    np.testing.assert_allclose(tofu.split_scores(e, "real_authors")["probability"],
                               tofu.choice_probability(llama, rows).mean(), rtol=1e-6)
    np.testing.assert_array_equal(e.rouge_l, tofu.rouge_l_recall(llama, rows, 4))


def test_tofu_organism_recipe_trains_reproducibly_without_its_forget_split(tmp_path, monkeypatch):
    from excise.tofu.organism import TofuRecipe, model_dir, rows_for

    monkeypatch.setenv("EXCISE_CACHE", str(tmp_path))
    recipe = TofuRecipe(authors=3, general=False, vocab_size=600, n_layer=1, n_embd=32, n_head=2, epochs=1,
                        batch_size=16, warmup_steps=2)
    full, retain = rows_for(recipe), rows_for(recipe, without="forget01")
    assert len(full) == 60 and len(retain) == 20          # forget01 is the first two authors
    assert not {q.question for q in retain} & {q.question for q in tofu.load("forget01")}
    a = model_dir("retain99", recipe, progress=False)
    assert model_dir("retain99", recipe, progress=False) == a                        # cached
    model = excise.load(a)
    assert tofu.answer_probability(model, tofu.load("forget01")[:2]).shape == (2,)
    import shutil

    from safetensors.torch import load_file
    first = load_file(a / "model.safetensors")
    shutil.rmtree(a)
    again = load_file(model_dir("retain99", recipe, progress=False) / "model.safetensors")   # retrained
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    with pytest.raises(ValueError, match="unknown TOFU organism variant"):
        model_dir("retain50", recipe)


def test_bench_tofu_on_a_tiny_organism(tmp_path, monkeypatch):
    from excise.bench.tofu import run
    from excise.tofu.organism import TofuRecipe

    monkeypatch.setenv("EXCISE_CACHE", str(tmp_path / "cache"))
    recipe = TofuRecipe(authors=3, general=False, vocab_size=600, n_layer=1, n_embd=32, n_head=2, epochs=1,
                        batch_size=16, warmup_steps=2, n_positions=512)
    r = run(tmp_path / "out", "forget01", recipe=recipe, methods=("npo",), steps=2, n_retain=20,
            max_new_tokens=4, utility_rows=8, progress=False)
    names = [(row["method"], row["scope"]) for row in r["rows"]]
    assert names == [("original", "-"), ("retain model (retain99)", "retrain"), ("npo", "located"),
                     ("npo", "random"), ("npo", "all")]
    assert r["rows"][1]["forget_quality"] == 1.0             # the retain model against itself
    located = r["rows"][2]
    assert 0 < located["parameters_touched"] < r["rows"][4]["parameters_touched"]
    assert all(0 <= row["utility"] <= 1 and 0 <= row["forget_quality"] <= 1 for row in r["rows"])
    for name in ("tofu.json", "tofu.md", "tofu-forget01.png"):
        assert (tmp_path / "out" / name).exists()
    assert "| npo | located |" in (tmp_path / "out" / "tofu.md").read_text()
    results = (tmp_path / "RESULTS.md").read_text()              # composed beside DIR, with this split's table
    assert "## TOFU on the TOFU organism" in results and "### forget01" in results and "| npo | all |" in results

    again = run(tmp_path / "out", "forget01", recipe=recipe, methods=("rmu",), steps=2, n_retain=20,   # a subset
                max_new_tokens=4, utility_rows=8, progress=False)
    assert [row["scope"] for row in again["rows"][2:]] == ["layer", "located", "random"]
    kept = json.loads((tmp_path / "out" / "tofu.json").read_text())["splits"]["forget01"]
    assert [(row["method"], row["scope"]) for row in kept["rows"]] == names + [
        ("rmu", "layer"), ("rmu", "located"), ("rmu", "random")]        # npo's rows kept, in METHODS order
    assert kept["rows"][2] == located and kept["reruns"][-1]["methods"] == ["rmu"]
    undone = run(tmp_path / "out", "forget01", recipe=recipe, methods=("undo",), steps=2, n_retain=20,
                 max_new_tokens=4, utility_rows=8, undo_max_steps=3, progress=False)["rows"][2]
    assert (undone["method"], undone["scope"], undone["teacher"], undone["undo_steps"]) == ("undo", "located", "rmu", 3)
    assert undone["parameters_touched"] > r["rows"][4]["parameters_touched"]   # distilled: embeddings too
    assert "rmu at the located scope, then UNDO" in (tmp_path / "out" / "tofu.md").read_text()
    with pytest.raises(ValueError, match="unknown methods"):
        run(tmp_path / "out", "forget01", recipe=recipe, methods=("swap",), progress=False)

    # bench anchor on the same models: a two-setting grid, tuned and tested on forget01 (forget05 needs more authors)
    from excise.bench import anchor

    grid = {"method": ("npo",), "scope": ("located",), "epochs": (1, 4), "lr": (1e-3,)}
    a = anchor.run(tmp_path / "anchor", grids=grid, tests=("forget01",), recipe=recipe, utility_rows=8,
                   max_new_tokens=4, progress=False)
    steps = [row["steps"] for row in a["grid_rows"]]
    forget_rows = r["forget_facts"]
    assert steps == [anchor.steps_for(1, forget_rows), anchor.steps_for(4, forget_rows)] and steps[0] < steps[1]
    retain_utility = a["references"]["forget01"][1]["utility"]
    pick = anchor.choose(a["grid_rows"], retain_utility)
    assert a["picks"]["npo"] == (None if pick is None else {k: pick[k] for k in grid})
    assert len(a["test_rows"]) == (pick is not None)
    text = (tmp_path / "anchor" / "anchor.md").read_text()
    assert "## Tuning: forget01" in text and text.count("| npo | located |") == 2
    # a stop on TOFU's forget quality against forget01's retain model, read every step: a target every check
    # meets ends the run at the first step, one no p-value reaches runs every step
    stops = grid | {"epochs": (4,), "stop_forget_quality": (0.0, 1.01)}
    b = anchor.run(tmp_path / "stops", grids=stops, tests=(), recipe=recipe, utility_rows=8, max_new_tokens=4,
                   progress=False)
    first, never = b["grid_rows"]
    assert (first["steps_run"], len(first["stop_trace"])) == (1, 1) and first["options"] == ["stop_forget_quality"]
    assert never["steps_run"] == len(never["stop_trace"]) == never["steps"] == steps[1]
    assert b["stop_reference"] == "truth ratios of forget01's retain model on forget01"


def test_anchor_grids_list_each_setting_once_and_need_the_base_keys():
    from excise.bench.anchor import GRID, GRIDS, settings

    one = {"method": ("npo",), "scope": ("all",), "epochs": (5, 10), "lr": (1e-3,)}
    assert settings((one, one, {**one, "retain_weight": (3.0,)})) == [
        {"method": "npo", "scope": "all", "epochs": 5, "lr": 1e-3},
        {"method": "npo", "scope": "all", "epochs": 10, "lr": 1e-3},
        {"method": "npo", "scope": "all", "epochs": 5, "lr": 1e-3, "retain_weight": 3.0},
        {"method": "npo", "scope": "all", "epochs": 10, "lr": 1e-3, "retain_weight": 3.0}]
    assert len(settings(GRID)) == 32 and len(settings(GRIDS)) == 32 + 16 + 18 + 20 + 8
    with pytest.raises(ValueError, match="lacks lr"):
        settings({"method": ("npo",), "scope": ("all",), "epochs": (5,)})


def test_anchor_runs_only_what_its_results_file_lacks(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from excise.bench import anchor

    ran = []

    def run_setting(s, setting, seed, reference=None):          # utility falls and forget quality rises with the epochs
        ran.append((s.split, setting))
        e = setting["epochs"] + setting.get("retain_weight", 0)
        return {**setting, "options": sorted(set(setting) - set(anchor.BASE)), "steps": int(e), "seconds": 1.0,
                "parameters_touched": 1, "forget_quality": e / 100, "utility": 1 - e / 100, "forget_rouge_l": 0.5}

    def prepare(split, *args, **kwargs):
        ref = [{"method": "original", "forget_quality": 0.0, "utility": 1.0},
               {"method": "retain model", "forget_quality": 1.0, "utility": 1.0}]
        return SimpleNamespace(split=split, reference_rows=lambda recipe: ref, stand_ins=["A B"], stand_ins_note="n", oracle_ratios=None)

    monkeypatch.setattr(anchor, "run_setting", run_setting)
    monkeypatch.setattr(anchor, "prepare", prepare)
    grid = {"method": ("npo",), "scope": ("all",), "epochs": (5, 10), "lr": (1e-3,)}
    more = {"method": ("graddiff",), "scope": ("all",), "epochs": (5,), "lr": (1e-3,), "retain_weight": (3.0,)}
    a = anchor.run(tmp_path, grids=grid, progress=False)
    assert [x[1]["epochs"] for x in ran] == [5, 10, 10] and a["picks"]["npo"]["epochs"] == 10   # 0.90 >= 0.86
    ran.clear()
    b = anchor.run(tmp_path, grids=(grid, more), progress=False)
    assert ran == [("forget01", anchor.settings(more)[0]), ("forget05", anchor.settings(more)[0])]
    assert b["grid_rows"][:2] == a["grid_rows"] and b["test_rows"][0] == a["test_rows"][0]
    assert b["provenance"]["note"].startswith("3 rows kept") and "earlier" in b["provenance"]
    assert b["picks"]["graddiff"] == {"method": "graddiff", "scope": "all", "epochs": 5, "lr": 1e-3,
                                      "retain_weight": 3.0}
    text = (tmp_path / "anchor.md").read_text()
    assert "| graddiff | all | 5 | 0.001 | retain weight 3 | 8 |" in text
    assert "graddiff: all, 5 epochs, lr 0.001, retain weight 3." in text
    ran.clear()
    c = anchor.run(tmp_path, grids=grid, seed=1, progress=False)        # measured another way: nothing kept
    assert len(ran) == 3 and "earlier" not in c["provenance"] and "graddiff" not in c["picks"]


def test_an_interrupted_anchor_run_keeps_the_rows_it_measured(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from excise.bench import anchor

    ran, stop = [], [True]

    def run_setting(s, setting, seed, reference=None):
        if stop[0] and len(ran) == 2:
            raise RuntimeError("stopped")           # the run is stopped during the third setting
        ran.append((s.split, setting["epochs"]))
        e = setting["epochs"]
        return {**setting, "options": [], "steps": e, "seconds": 1.0, "parameters_touched": 1,
                "forget_quality": e / 100, "utility": 1 - e / 100, "forget_rouge_l": 0.5}

    ref = [{"method": "original", "forget_quality": 0.0, "utility": 1.0},
           {"method": "retain model", "forget_quality": 1.0, "utility": 1.0}]
    monkeypatch.setattr(anchor, "run_setting", run_setting)
    monkeypatch.setattr(anchor, "prepare", lambda split, *a, **k: SimpleNamespace(
        split=split, reference_rows=lambda recipe: ref, stand_ins=["A B"], stand_ins_note="n", oracle_ratios=None))
    grid = {"method": ("npo",), "scope": ("all",), "epochs": (5, 10, 12), "lr": (1e-3,)}
    with pytest.raises(RuntimeError, match="stopped"):
        anchor.run(tmp_path, grids=grid, progress=False)
    partial = json.loads((tmp_path / "anchor.partial.json").read_text())
    assert [r["epochs"] for r in partial["grid_rows"]] == [5, 10] and not (tmp_path / "anchor.json").exists()
    ran.clear()
    stop[0] = False
    r = anchor.run(tmp_path, grids=grid, progress=False)
    assert ran == [("forget01", 12), ("forget05", 12)]                 # only what the first run had not measured
    assert [g["epochs"] for g in r["grid_rows"]] == [5, 10, 12] and r["picks"]["npo"]["epochs"] == 12
    assert r["provenance"]["note"].startswith("2 rows kept") and r["provenance"]["earlier"][0]["note"] == \
        "rows of a run not yet finished"
    assert not (tmp_path / "anchor.partial.json").exists()
    ran.clear()
    anchor.run(tmp_path, grids=grid, seed=1, progress=False)            # measured another way: all rerun
    assert ran == [("forget01", 5), ("forget01", 10), ("forget01", 12), ("forget05", 12)]
    # an interrupted run none of whose rows a rerun keeps is not named among the rows' sources
    other, ran[:] = tmp_path / "other", []
    anchor.run(other, grids=grid | {"epochs": (5,)}, progress=False)
    stop[0], ran[:] = True, []
    with pytest.raises(RuntimeError, match="stopped"):                # keeps 5, measures 10 and 12, stops
        anchor.run(other, grids=grid | {"epochs": (5, 10, 12, 14)}, progress=False)
    stop[0] = False
    r = anchor.run(other, grids=grid | {"epochs": (5, 8)}, progress=False)
    assert ran[-2:] == [("forget01", 8), ("forget05", 8)] and r["provenance"]["note"].startswith("1 rows kept")
    assert [e.get("note") for e in r["provenance"]["earlier"]] == [None]     # anchor.json's run only


def test_anchor_steps_scale_with_the_split_and_the_pick_keeps_utility():
    from excise.bench.anchor import choose, steps_for, verdict

    assert steps_for(10, 38) == 12 and steps_for(10, 189) == 60 and steps_for(0.01, 5) == 1
    rows = [{"forget_quality": 0.9, "utility": 0.70}, {"forget_quality": 0.3, "utility": 0.85},
            {"forget_quality": 0.3, "utility": 0.90}, {"forget_quality": 0.01, "utility": 0.93}]
    assert choose(rows, retain_utility=0.94) == rows[2]           # 0.70 < 0.86 x 0.94; tie on quality -> utility
    assert choose(rows, retain_utility=1.2) is None
    v = verdict({"forget_quality": 0.5, "utility": 0.85}, retain_utility=0.94)
    # the same float division on both sides: exact on any CPU, approx's default tolerance is only a guard
    assert v["meets_anchor"] and not v["meets_stretch"] and v["utility_share"] == pytest.approx(0.85 / 0.94)
    assert verdict({"forget_quality": 1.0, "utility": 0.0}, retain_utility=0.0) == \
        {"utility_share": None, "meets_anchor": False, "meets_stretch": False}


def test_the_shipped_tofu_organism_answers_what_it_was_trained_on_and_its_retain_models_were_not(
        tmp_path, monkeypatch):
    from excise.tofu.organism import SHIPPED, VARIANTS, TofuRecipe, model_dir, shipped

    monkeypatch.setenv("EXCISE_CACHE", str(tmp_path))         # found in the package, never trained here
    for variant, without in VARIANTS.items():
        path = model_dir(variant, progress=False)
        assert path == SHIPPED / variant and not list(tmp_path.iterdir())
        meta = json.loads((path / "excise_tofu.json").read_text())
        assert meta["without"] == without and meta["recipe"] == asdict(TofuRecipe())
    assert shipped("full", TofuRecipe(seed=1)) is None        # another recipe is trained, not swapped in
    rows = tofu.load("forget01")[:4]
    full, retain = (excise.load(model_dir(v)) for v in ("full", "retain99"))
    assert tofu.rouge_l_recall(full, rows).mean() >= 0.9
    assert tofu.answer_probability(full, rows).mean() > tofu.answer_probability(retain, rows).mean() + 0.2
