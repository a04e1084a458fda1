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
PENDING: dict[str, str] = {}


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


def _notebooks_build():
    spec = importlib.util.spec_from_file_location("notebooks_build", ROOT / "notebooks" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build


def test_committed_notebooks_are_built_from_build_py_and_small():
    """The notebooks in git are notebooks/build.py's cells (same ids, same sources), executed, under 1 MB in all."""
    import nbformat

    build = _notebooks_build()
    total = 0
    for name, cells in build.NOTEBOOKS.items():
        path = ROOT / "notebooks" / f"{name}.ipynb"
        total += path.stat().st_size
        committed = nbformat.read(path, as_version=4)
        expected = build.notebook(cells)
        assert [(c.id, c.source) for c in committed.cells] == [(c.id, c.source) for c in expected.cells], \
            f"{path.name} is not what notebooks/build.py writes: run `python notebooks/build.py --execute {name[:2]}`"
        code = [c for c in committed.cells if c.cell_type == "code"]
        assert all(c.execution_count for c in code), f"{path.name} is committed unexecuted"
    assert total < 1_000_000, f"the executed notebooks weigh {total / 1e6:.2f} MB; keep figures small"


def test_cell_ids_are_stable_across_builds():
    build = _notebooks_build()
    cells = build.NOTEBOOKS["01_where_is_a_fact"]
    first = [c.id for c in build.notebook(cells).cells]
    assert first == [c.id for c in build.notebook(cells).cells] and len(set(first)) == len(first)
