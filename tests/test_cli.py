"""The command line."""

from __future__ import annotations

import json

import pytest

from excise.cli import main


def test_demo_prints_recall_and_writes_report(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| **all** |" in out and "birthplace" in out
    data = json.loads((tmp_path / "recall.json").read_text())
    assert data["overall"]["request"] >= 0.99


def test_unknown_command_exits_nonzero():
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code != 0
