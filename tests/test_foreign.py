"""excise on models that are not the organism (issues 20 and 25).

Two foreign models (tests/foreign.py), trained once on a world the organism
never had and shipped in tests/data/foreign: a GPT-2 with a word-level tokenizer and two-word
subjects, and a Llama (RMSNorm, rotary, grouped-query attention, SwiGLU) with
a SentencePiece-style tokenizer and one-token subjects. On each, the command
line does what a user would: locate, edit with rome, memit and npo, verify.
Nothing is given that excise can derive: rome without --layer or --sample
traces the facts for the site (excise.locate.edit_site: the layer and the
position) and samples the model for the covariance; memit gets the training text (--sample), verify the
general sentences (--sample: its general text), npo the facts to keep
(--retain).

Where a default chosen on the organism fails here, the test is an
xfail(strict=True) naming the measurement: it fails (XPASS) the day the
default is fixed, and the marker goes then.

The models' weights ship (tests/data/foreign), so only inference and the
edits' own arithmetic can differ between machines. Every asserted number
goes through `check` against a bar in BARS; with EXCISE_FOREIGN_RECORD set,
`check` also appends the number to that file. `python -m tests.foreign_spread`
runs this file under 3 CPU kernel paths x 2 thread counts, and
tests/data/foreign/spread.json holds what it measured; the last test here
fails when a bar sits inside that spread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import operator
import os
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch

import excise
from excise.cli import main
from excise.context import derive
from excise.edit import EditRecord
from excise.facts import FactSet, tokenize_prompt
from excise.verify import AuditReport, defaults

TRAINED = ("request", "paraphrase", "question", "completion")
SPREAD = Path(__file__).parent / "data" / "foreign" / "spread.json"

# Every number asserted below: (comparison, bar). With 3 facts, recall moves in steps of 1/3 (paraphrases: 1/6), so
# 0.05 means none recalled and 0.34 at most one; "others" is recall of the other subjects' 48 facts.
BARS = {
    "recall_trained_min": (">=", 1.0), "p_clean_min": (">", 0.5), "trace_mlp_peak_layer": ("==", 0),
    "site_prompt_last_share": (">=", 0.1),                  # excise.locate.site.MIN_RESTORED: the prompt's end
    "rome_site_layer": {"gpt2": ("==", 2), "llama": ("==", 1)}, "memit_site_layer": {"gpt2": ("==", 2), "llama": ("==", 1)},
    "rome_facts": ("<=", 0.05), "rome_paraphrase": ("<=", 0.34), "rome_others": (">=", 0.9),
    "verify_traced_reference": (">=", 1.0), "verify_traced_edited": ("<=", 0.05),
    "rome_traced_facts": ("<=", 0.34), "rome_traced_paraphrase": ("<=", 0.34), "rome_traced_others": (">=", 0.9),
    "memit_facts": ("<=", 0.34), "memit_others": (">=", 0.9),
    "npo_facts": ("<=", 0.34), "npo_paraphrase": ("<=", 0.34), "npo_others": (">=", 0.9),
    "verify_reference": (">=", 1.0), "verify_edited": ("<=", 0.34), "verify_retain_kept": (">=", 0.9),
}
OPS = {"<=": operator.le, ">=": operator.ge, ">": operator.gt, "==": operator.eq}


def bar(arch: str, name: str) -> tuple[str, float]:
    """(comparison, bar) of `name` on `arch`."""
    b = BARS[name]
    return b[arch] if isinstance(b, dict) else b


def check(foreign: Foreign, name: str, value: float) -> None:
    """Assert `value` against BARS[name]; with EXCISE_FOREIGN_RECORD set, first append it to that file."""
    if record := os.environ.get("EXCISE_FOREIGN_RECORD"):
        with open(record, "a") as f:
            f.write(json.dumps({"arch": foreign.arch, "name": name, "value": float(value)}) + "\n")
    op, b = bar(foreign.arch, name)
    assert OPS[op](value, b), f"{foreign.arch} {name} = {value:.4f}, the bar: {op} {b}"
MLP_OUT = {"gpt2": ("transformer.h.{}.", "c_proj"), "llama": ("model.layers.{}.", "down_proj")}   # in the name

NPO_NEURONS = pytest.mark.xfail(strict=True, reason=(
    "the CLI's 256 located neurons (chosen on the organism: 12% of its 2,048 MLP neurons) are half of the "
    "foreign Llama's 516: NPO keeps 0.85 of the other subjects' facts (64 neurons: 0.90, every parameter: 0.94)"))


class Foreign:
    """One foreign model and the command line's outputs on it, each command run once, on first use."""

    def __init__(self, arch: str, path, out):
        self.arch, self.dir, self.out = arch, path, out
        self.facts_file, self.retain_file = path / "facts.json", path / "retain.json"
        self.facts = list(FactSet.load(self.facts_file))
        self.world = FactSet.load(path / "world.json")
        gone = {f.subject for f in self.facts}
        self.others = [f for f in self.world if f.subject not in gone]
        self.model = excise.load(path)
        self.printed: dict[str, str] = {}
        self.warned: dict[str, list[str]] = {}

    def cli(self, name: str, *argv) -> str:
        """`excise argv...` in this process, once per name; what it printed (and warned). Fails on a nonzero exit."""
        if name not in self.printed:
            out = io.StringIO()
            with contextlib.redirect_stdout(out), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                rc = main([str(a) for a in argv])
            assert rc == 0, f"excise {' '.join(map(str, argv))} exited {rc}:\n{out.getvalue()}"
            self.printed[name], self.warned[name] = out.getvalue(), [str(w.message) for w in caught]
        return self.printed[name]

    def edit(self, name: str, method: str, *extra):
        record = self.out / f"{name}.safetensors"
        self.cli(name, "edit", self.dir, "--facts", self.facts_file, "--method", method, "--out", record, *extra)
        return record

    def rome(self):
        """rome as a user starts it: no --layer, no --sample."""
        return self.edit("rome", "rome")

    def npo(self):
        return self.edit("npo", "npo", "--retain", self.retain_file)

    def locate(self) -> list:
        self.cli("locate", "locate", self.dir, "--facts", self.facts_file, "--out", self.out / "loc")
        return [excise.locate.Localization.load(self.out / "loc" / f"trace-{i}.json") for i in range(len(self.facts))]

    def recall_with(self, record, facts, family: str = "request") -> float:
        """Recall of `facts` with the record applied (then undone, bit for bit)."""
        before = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        rec = EditRecord.load(record, self.model)
        rec.apply()
        try:
            return excise.recall_table(self.model, facts, families=(family,)).rate()
        finally:
            rec.undo()
            assert all(torch.equal(before[n], p) for n, p in self.model.named_parameters())


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def foreign(request, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("EXCISE_CACHE", str(tmp_path_factory.mktemp(f"cache_foreign_{request.param}")))
    path = request.getfixturevalue(f"foreign_{request.param}_dir")
    yield Foreign(request.param, path, tmp_path_factory.mktemp(f"cli_foreign_{request.param}"))
    mp.undo()


def _xfail_on(archs: tuple[str, ...], mark, foreign: Foreign, request) -> None:
    if foreign.arch in archs:
        request.applymarker(mark)


def _trace_layer(locs) -> int:
    """The layer whose MLP, restored at the last subject token, brings the answer back most, over most facts."""
    peaks = [int(loc.scores["mlp"][:, loc.subject[1] - 1].argmax()) for loc in locs]
    return Counter(peaks).most_common(1)[0][0]


def test_the_foreign_model_recalls_its_world_under_every_trained_template(foreign):
    table = excise.recall_table(foreign.model, foreign.world, families=TRAINED)
    check(foreign, "recall_trained_min", min(table.rate(fam) for fam in TRAINED))
    span = tokenize_prompt(foreign.model, foreign.facts[0]).subject
    assert span[1] - span[0] == {"gpt2": 2, "llama": 1}[foreign.arch]        # two-word vs one-token subjects
    if foreign.arch == "llama":
        assert (foreign.model.cfg.n_heads, foreign.model.cfg.n_key_value_heads) == (4, 2)


def test_locate_traces_every_fact(foreign):
    locs = foreign.locate()
    assert "knowledge context" in foreign.printed["locate"]                 # the derived context is printed first
    assert not [w for w in foreign.warned["locate"] if "RoPE" in w]         # the resume probe's warning is its own
    for i, (fact, loc) in enumerate(zip(foreign.facts, locs, strict=True)):
        assert loc.meta["fact"]["subject"] == fact.subject and (foreign.out / "loc" / f"trace-{i}.png").exists()
        assert set(loc.kinds) == {"resid", "mlp", "attn"}
    check(foreign, "p_clean_min", min(loc.meta["p_clean"] for loc in locs))


# Where edit_site points on the three facts of facts.json (restored share of the noising damage, late layers at
# the prompt's end vs the last subject token): Llama 0.30 vs 0.95, GPT-2 0.12 vs 0.26; at or above 0.1 the
# prompt's end is chosen (excise/locate/site.py says why).
TRACED = {"gpt2": (2, "prompt_last"), "llama": (1, "prompt_last")}
OTHERS_AT_PROMPT_END = pytest.mark.xfail(strict=True, reason=(
    "a write at the Llama's prompt's last token (layer 1) reaches other subjects' facts of the same relation, "
    "whose keys there are close: other subjects kept 0.85 (rome) / 0.90 (memit) on these 3 facts, 0.81-0.84 on "
    "20 (benchmarks/results/sites.md); a covariance with the other facts' prompt-end keys measured 0.90-0.95"))


def test_rome_writes_a_rank_one_update_per_fact_at_the_traced_site_from_a_derived_sample(foreign):
    """No --layer: the edit goes where the causal trace points (the layer and the position), and says why."""
    record = foreign.rome()
    printed = foreign.printed["rome"]
    layer, position = TRACED[foreign.arch]
    assert "generated_sample" in printed and f"edit site: layer {layer} at {position}" in printed   # derived, said
    block, out = MLP_OUT[foreign.arch]
    rec = EditRecord.load(record, foreign.model)
    site = rec.meta["site"]
    check(foreign, "site_prompt_last_share", site["shares"]["prompt_last"])
    check(foreign, "rome_site_layer", site["layer"])
    assert (site["layer"], site["position"]) == (layer, position) and rec.hyper["position"] == position
    assert len(site["scores"]) == foreign.model.cfg.n_layers and set(site["shares"]) == {"subject_last", "prompt_last"}
    assert len(site["peaks"]) == len(foreign.facts) and rec.meta["context"]["layer"].startswith("traced:")
    assert not [w for w in foreign.warned["rome"] if "localizes these facts poorly" in w]
    [name] = rec.parameters_touched()                                      # one matrix: the MLP's output
    assert name.startswith(block.format(site["layer"])) and out in name, name
    W = dict(foreign.model.named_parameters())[name]
    before = W.detach().clone()
    rec.apply()
    try:
        assert 1 <= torch.linalg.matrix_rank(W.detach() - before) <= len(foreign.facts)
    finally:
        rec.undo()


def test_rome_without_a_layer_deletes_the_facts(foreign):
    record = foreign.rome()
    check(foreign, "rome_facts", foreign.recall_with(record, foreign.facts))
    check(foreign, "rome_paraphrase", foreign.recall_with(record, foreign.facts, "paraphrase"))


def test_rome_without_a_layer_keeps_other_subjects(foreign, request):
    _xfail_on(("llama",), OTHERS_AT_PROMPT_END, foreign, request)
    check(foreign, "rome_others", foreign.recall_with(foreign.rome(), foreign.others))


def test_verify_on_the_traced_rome_record_shows_the_facts_gone(foreign):
    """The acceptance of issue 25: `excise edit DIR --facts F --method rome` (no --layer, no --sample), then
    `excise verify` on its record."""
    record = foreign.rome()
    out = foreign.out / "audit_traced"
    # the probes give the recall asserted here; the full audit through the CLI is the next test's
    foreign.cli("verify_traced", "verify", foreign.dir, "--facts", foreign.facts_file, "--retain", foreign.retain_file,
                "--record", record, "--out", out, "--attacks", "probes")
    report = AuditReport.load(out / "audit.json")
    check(foreign, "verify_traced_reference", report.recall("reference"))
    check(foreign, "verify_traced_edited", report.recall("edited"))


def test_rome_at_the_layer_the_trace_points_to_deletes_and_keeps_other_subjects(foreign):
    """The user's way round a wrong default: locate, then edit where the trace's MLP peak is."""
    layer = _trace_layer(foreign.locate())
    check(foreign, "trace_mlp_peak_layer", layer)
    record = foreign.edit("rome_traced", "rome", "--layer", layer, "--sample", foreign.dir / "corpus.txt")
    check(foreign, "rome_traced_facts", foreign.recall_with(record, foreign.facts))
    check(foreign, "rome_traced_paraphrase", foreign.recall_with(record, foreign.facts, "paraphrase"))
    check(foreign, "rome_traced_others", foreign.recall_with(record, foreign.others))


def test_memit_at_the_traced_site_deletes_the_facts_and_keeps_other_subjects(foreign, request):
    """The CLI's MEMIT at the traced layer alone: lambda d_mlp / 9 (was 300: 0.27-0.51 of the shift reached,
    recall 1.00 on both) and values optimized through the write (without: GPT-2 recall still 1.00). The default
    spreads a batch over the layers the trace supports (tests/test_any_entity.py, benchmarks/results/batch.md);
    this pins the one-layer write, whose bars spread.json measured across float paths."""
    record = foreign.edit("memit", "memit", "--sample", foreign.dir / "corpus.txt", "--option", "spread=none")
    rec = EditRecord.load(record, foreign.model)
    site = rec.meta["site"]
    check(foreign, "memit_site_layer", site["layer"])
    assert (site["layer"], site["position"]) == TRACED[foreign.arch] and rec.hyper["through_edit"]
    assert rec.hyper["position"] == site["position"]
    check(foreign, "memit_facts", foreign.recall_with(record, foreign.facts))
    _xfail_on(("llama",), OTHERS_AT_PROMPT_END, foreign, request)
    check(foreign, "memit_others", foreign.recall_with(record, foreign.others))


def test_npo_on_located_neurons_deletes_the_facts(foreign):
    record = foreign.npo()
    assert "generated_sample" not in foreign.printed["npo"]      # nothing sampled that npo does not read
    check(foreign, "npo_facts", foreign.recall_with(record, foreign.facts))
    check(foreign, "npo_paraphrase", foreign.recall_with(record, foreign.facts, "paraphrase"))


def test_npo_on_located_neurons_keeps_other_subjects(foreign, request):
    _xfail_on(("llama",), NPO_NEURONS, foreign, request)
    check(foreign, "npo_others", foreign.recall_with(foreign.npo(), foreign.others))


def test_verify_gives_chance_levels_or_says_what_it_could_not_compute(foreign):
    """The audit of the rome edit at the traced layer, next to the unedited model, with a derived holdout."""
    test_rome_at_the_layer_the_trace_points_to_deletes_and_keeps_other_subjects(foreign)
    out = foreign.out / "audit"
    foreign.cli("verify", "verify", foreign.dir, "--facts", foreign.facts_file, "--retain", foreign.retain_file,
                "--sample", foreign.dir / "general.txt", "--record", foreign.out / "rome_traced.safetensors",
                "--out", out)
    assert "generated_sample" not in foreign.printed["verify"]   # --sample is the general text
    report = AuditReport.load(out / "audit.json")
    assert report.roles() == ["reference", "edited"]
    check(foreign, "verify_reference", report.recall("reference"))
    check(foreign, "verify_edited", report.recall("edited"))
    check(foreign, "verify_retain_kept", report.kept("retain"))
    assert report.config["n_general"] == len(
        (foreign.dir / "general.txt").read_text().splitlines())
    missing = "\n".join(report.not_computed())
    assert "retrain-oracle" in missing and "pass oracle=" in missing
    # two-word names: never-seen subjects recombined from their parts; one-token names: spelled like the subjects
    how = "recombinations of the subjects' first and last names" if foreign.arch == "gpt2" else \
        "names generated from a character 3-gram model"
    assert how in report.config["context"]["holdout"]
    assert report.config["n_holdout"] > 0 and "chance levels" not in missing
    for role in ("reference", "edited"):
        assert all(report.chance(role, attack) is not None for attack in defaults()), role
        assert set(report.leakage(role)) == {"probes", "logit_lens", "relearn", "membership", "truth_ratio"}, role


def test_derive_makes_holdout_facts_about_never_seen_subjects(foreign_gpt2_dir, foreign_llama_dir):
    """API: derive(model, facts) recombines two-word names into subjects the world never had; one-token
    subjects, which have no parts to recombine, get new names spelled like the subjects given."""
    model = excise.load(foreign_gpt2_dir)
    world = FactSet.load(foreign_gpt2_dir / "world.json")
    facts = [world.fact(town, "founder") for town in world.subjects[:6]]          # six towns
    ctx = derive(model, facts, generate=False)
    new = {f.subject for f in ctx.holdout}
    assert ctx.notes["holdout"].startswith("derived:") and len(new) >= 3
    assert not new & set(world.subjects)                                           # never seen
    firsts, lasts = {f.subject.split()[0] for f in facts}, {f.subject.split()[1] for f in facts}
    assert all(s.split()[0] in firsts and s.split()[1] in lasts for s in new)
    assert {f.relation for f in ctx.holdout} == {"founder"}
    assert {f.target for f in ctx.holdout} <= {f.target for f in facts}

    # one-token place names have no parts to recombine: new names spelled like every subject given
    llama = excise.load(foreign_llama_dir)
    world = FactSet.load(foreign_llama_dir / "world.json")
    facts, retain = list(FactSet.load(foreign_llama_dir / "facts.json")), list(FactSet.load(foreign_llama_dir / "retain.json"))
    ctx = derive(llama, facts, retain=retain, generate=False)
    new = {f.subject for f in ctx.holdout}
    assert ctx.notes["holdout"].startswith("derived: 30 names generated from a character 3-gram model") and len(new) == 30
    assert not {s.lower() for s in new} & {s.lower() for s in world.subjects}                  # never a real subject
    assert not new & {f.target for f in world}                                                   # nor a target
    assert set(ctx.stand_ins) == new                                                             # swap's stand-ins too
    lengths = [len(s) for s in world.subjects]
    assert all(min(lengths) <= len(s) <= max(lengths) and s[0].isupper() for s in new)


# The xfail(strict=True) assertions: on every float path they must fail, or the marker turns into an XPASS there.
EXPECTED_TO_FAIL = {("llama", "rome_others"), ("llama", "memit_others"), ("llama", "npo_others")}


def test_every_bar_sits_outside_the_spread_measured_across_float_paths():
    """tests/data/foreign/spread.json (`python -m tests.foreign_spread`): each number's min and max over 8 runs (3
    ATen kernel paths x 2 thread counts, and 2 with MKL held to AVX2 / SSE4.2) lie on the same side of its bar, the
    side the test expects; and the bars measured are today's bars, for every number `check` asserts."""
    spread = json.loads(SPREAD.read_text())
    from tests.foreign_spread import RUNS

    assert {(r["capability"], r.get("mkl"), r["threads"]) for r in spread["runs"]} == set(RUNS), "re-measure"
    assert all(r["exit_code"] == 0 for r in spread["runs"]), spread["runs"]
    for arch in ("gpt2", "llama"):
        assert set(spread["values"][arch]) == set(BARS), f"re-measure: python -m tests.foreign_spread ({arch})"
        for name, v in spread["values"][arch].items():
            op, b = bar(arch, name)
            assert v["bar"] == [op, b], f"{arch} {name}: the bar moved since it was measured; re-measure"
            holds = [OPS[op](v["min"], b), OPS[op](v["max"], b)]
            want = (arch, name) not in EXPECTED_TO_FAIL
            assert holds == [want, want], f"{arch} {name}: measured {v['min']:.4f}..{v['max']:.4f}, bar {op} {b}"


def test_the_shipped_models_are_the_current_recipes():
    """tests/data/foreign holds what `python -m tests.foreign` builds: the recipe, the world and the facts files."""
    from tests.foreign import GPT2, LLAMA, generate, shipped_dir

    for arch, recipe in (("gpt2", GPT2), ("llama", LLAMA)):
        path = shipped_dir(arch)
        meta = json.loads((path / "foreign.json").read_text())
        assert meta["recipe"] == dataclasses.asdict(recipe), f"{arch}: rebuild with `python -m tests.foreign`"
        world = generate(recipe.seed, two_word_names=arch == "gpt2")
        assert [f.to_dict() for f in FactSet.load(path / "world.json")] == [f.to_dict() for f in world.facts]
        assert [f.to_dict() for f in FactSet.load(path / "facts.json")] == [f.to_dict() for f in world.forget()]


def test_the_build_recipe_still_trains_a_model_that_loads(tmp_path):
    """The builder itself, on a recipe too short to learn the world (2 epochs, about 2 s)."""
    from tests.foreign import LLAMA, build

    meta = build(tmp_path / "m", dataclasses.replace(LLAMA, epochs=2))
    assert meta["recipe"]["epochs"] == 2 and meta["n_facts"] == 60 and math.isfinite(meta["final_loss"])
    model = excise.load(tmp_path / "m")
    assert model.cfg.n_layers == LLAMA.n_layer and (model.cfg.n_heads, model.cfg.n_key_value_heads) == (4, 2)
