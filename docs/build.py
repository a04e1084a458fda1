"""Build excise's API reference from its docstrings with pdoc.

    python docs/build.py                 # -> docs/api/index.html (about 15 s on one CPU core)
    python docs/build.py --out DIR

The HTML is not kept in git (about 6 MB, most of it the source listings and
the search index, and every docstring change would rewrite it); build it
when you want to read it. pdoc comes with the `test` extra. Any pdoc
warning (a module that fails to import, an annotation it cannot resolve)
fails the build; tests/test_docs.py runs it in CI.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).parent
FOOTER = "excise: locate, edit and verify facts in transformer language models"


def build(out: Path) -> list[str]:
    """Write the reference of every excise module into `out`; returns pdoc's warnings (empty: a clean build)."""
    import importlib
    import pkgutil

    import pdoc
    import pdoc.render

    import excise

    for info in pkgutil.walk_packages(excise.__path__, "excise."):   # imported first: what the libraries
        importlib.import_module(info.name)                          # warn on import is not pdoc's to report
    pdoc.render.configure(docformat="markdown", footer_text=FOOTER, show_source=True, search=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc("excise", output_directory=Path(out))
    return [f"{w.message} ({Path(w.filename).name}:{w.lineno})" for w in caught]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "api")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    problems = build(args.out)
    for p in problems:
        print(f"pdoc: {p}", file=sys.stderr)
    print(f"wrote {args.out / 'index.html'} in {time.perf_counter() - start:.1f} s"
          + (f"; {len(problems)} warning(s)" if problems else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
