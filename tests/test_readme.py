"""The README is the first thing a user runs: keep it and CI in step."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_is_two_commands_and_ci_runs_the_test_one():
    quickstart = (ROOT / "README.md").read_text().split("## Quickstart")[1].split("\n## ")[0]
    commands = re.findall(r"```bash\n(.+?)\n```", quickstart)
    assert len(commands) == 2
    assert "excise demo" in commands[0]
    assert "pytest" in commands[1]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_every_measured_number_comes_from_its_file():
    from excise.bench.readme import render

    readme = (ROOT / "README.md").read_text()
    assert "<!-- generated: demo -->" in readme and "<!-- generated: recall -->" in readme
    assert readme == render(readme), "README.md is stale: run `python -m excise.bench.readme`"


def test_no_measurement_is_typed_by_hand():
    """Outside the generated blocks and code, no fractions, timings or sizes: they belong to a source file."""
    readme = (ROOT / "README.md").read_text()
    prose = re.sub(r"<!-- generated: \w+ -->.*?<!-- /generated -->", "", readme, flags=re.S)
    prose = re.sub(r"```.*?```", "", prose, flags=re.S)
    # the supported Python; the shipped stories260K file's size; CI's time budget (a requirement, not a
    # measurement); the release the ranges exclude
    allowed = {"Python 3.11", "1 MB", "10 minutes on 2 cores", "transformers 5.24.0"}
    for a in allowed:
        prose = prose.replace(a, "")
    typed = re.findall(r"\d+\.\d+|\d+\s*(?:seconds|minutes|hours|s/fact|MB|GB)\b", prose)
    assert not typed, f"numbers typed into README.md by hand: {typed}; generate them (excise/bench/readme.py)"


def _requirements() -> dict:
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    return {r.name.lower(): r for r in reqs}


def test_dependencies_are_ranges_and_the_lock_lies_inside_them():
    from packaging.version import Version

    reqs = _requirements()
    for name in ("torch", "transformers", "transformer-lens"):
        spec = reqs[name].specifier
        assert any(s.operator == "<" for s in spec) and any(s.operator == ">=" for s in spec), (name, spec)
        assert not any(s.operator == "==" for s in spec), f"{name} is pinned in pyproject.toml; pin in constraints.txt"
    assert not reqs["transformers"].specifier.contains("5.24.0"), "5.24.0 breaks cached decoding (test_generation)"
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = Version(version)
    for name, req in reqs.items():
        assert name in pins, f"constraints.txt does not pin {name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"constraints.txt's {name} {pins[name]} is outside {req}"


def test_the_installed_stack_is_inside_the_declared_ranges():
    from importlib.metadata import version

    from packaging.version import Version

    reqs = _requirements()
    for name in ("torch", "transformers", "transformer-lens", "tokenizers", "numpy"):
        installed = Version(version(name))
        assert reqs[name].specifier.contains(Version(installed.base_version)), \
            f"{name} {installed} is outside the tested range {reqs[name]}: install with -c constraints.txt"
