"""The API reference: it builds without a pdoc warning, and every public function says what it returns and costs."""

from __future__ import annotations

import importlib.util
import inspect
import re
from pathlib import Path

import excise

ROOT = Path(__file__).resolve().parents[1]
MODULES = (excise.locate, excise.edit, excise.verify)

# Public functions whose docstrings still lack a return or a cost line, in files another change owns
# at the time of writing; the test below fails once one of them is fixed, so the list stays true.
PENDING = {
    "excise.locate.edit_site": "locate/site.py",
    "excise.edit.rome_each": "edit/rome.py",
    "excise.edit.memit_sequence": "edit/memit.py",
    "excise.edit.rank_one_update": "edit/rank_one.py",
    "excise.edit.key_second_moment": "edit/rank_one.py",
    "excise.edit.planted": "edit/rank_one.py",
}


def public_functions():
    for module in MODULES:
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isfunction(obj):
                yield f"{module.__name__}.{name}", obj


def says_return_and_cost(doc: str) -> bool:
    return bool(re.search(r"\breturn|\byield", doc, re.I)) and bool(re.search(r"\bcost", doc, re.I))


def test_every_public_function_says_what_it_returns_and_what_it_costs():
    names = dict(public_functions())
    assert len(names) > 30 and set(PENDING) <= set(names)
    missing = [n for n, f in names.items() if n not in PENDING and not says_return_and_cost(inspect.getdoc(f) or "")]
    assert not missing, f"docstrings without 'returns ...' / 'yields ...' and 'Cost: ...': {missing}"
    done = [n for n in PENDING if says_return_and_cost(inspect.getdoc(names[n]) or "")]
    assert not done, f"now documented, take them off PENDING: {done}"


def test_api_reference_builds_without_warnings(tmp_path):
    spec = importlib.util.spec_from_file_location("docs_build", ROOT / "docs" / "build.py")
    docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(docs)
    assert docs.build(tmp_path) == []
    page = (tmp_path / "excise" / "verify.html").read_text()
    assert 'id="audit"' in page and "returns an AuditReport" in page
    assert (tmp_path / "index.html").exists() and (tmp_path / "excise" / "locate.html").exists()
