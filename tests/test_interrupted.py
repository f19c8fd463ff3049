"""Interrupted discovery: Ctrl-C (SIGINT) or a kill (SIGKILL) while scoring, measuring the curve or writing
the report leaves nothing that passes for a run; the run that was there before stays whole; the same
command run again gives the same result. (The sweep's SIGKILL test is in test_sweep.py.)

Each interruption comes at a chosen moment: a small driver wraps the phase's function so that the process
signals itself when the phase begins, then runs the command line as a user would.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

import circuitfind as cf
from circuitfind.cli import main

ARGV = ["discover", "--model", "toy-induction", "--task", "induction", "--method", "eap-ig", "-n", "8",
        "--edges", "4", "--quiet"]
PHASES = {"scoring": "score_edges", "curve": "faithfulness_curve", "report": "render"}

DRIVER = """
import os, signal, sys, time
import circuitfind.discover
from circuitfind.cli import main

d = sys.modules["circuitfind.discover"]  # (the package's attribute of that name is the function)

phase, sig = sys.argv[1], getattr(signal, sys.argv[2])
# Ctrl-C as in a terminal, even where the suite runs in the background (a shell's `&` starts it with SIGINT ignored)
signal.signal(signal.SIGINT, signal.default_int_handler)

def hit(*args, **kwargs):
    os.kill(os.getpid(), sig)
    time.sleep(30)  # the signal arrives here

setattr(d, phase, hit)
sys.exit(main(sys.argv[3:]))
"""


def _same_result(a: Path, b: Path) -> None:
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (a, b))
    for r in (ra, rb):
        r.pop("seconds")
        r["provenance"].pop("command")
    assert ra == rb
    assert torch.equal(cf.EdgeScores.load(a).scores, cf.EdgeScores.load(b).scores)
    assert cf.Circuit.load(a).edges() == cf.Circuit.load(b).edges()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The run uninterrupted (its report left out: result.json does not record it, and it costs most)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(ARGV + ["--out", str(out), "--no-report"]) == 0
    return out


def _driven(phase: str, sig: str, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DRIVER, PHASES[phase], sig, *ARGV, "--out", str(out)],
                          capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("phase", ["scoring", "curve"])
def test_ctrl_c_before_the_run_is_written_leaves_nothing(phase, reference, tmp_path, capsys):
    """(in-process: KeyboardInterrupt is what Ctrl-C raises)"""
    out = tmp_path / "run"
    with mock.patch(f"circuitfind.discover.{PHASES[phase]}", side_effect=KeyboardInterrupt):
        assert main(ARGV + ["--out", str(out)]) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"circuitfind: interrupted; nothing was written to {out} (run the same command again to redo it)"
    assert not any(tmp_path.iterdir())  # (the same command run again: the SIGINT and SIGKILL tests below)


def test_ctrl_c_while_overwriting_keeps_the_earlier_run(reference, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with mock.patch("circuitfind.discover.render", side_effect=KeyboardInterrupt):
        assert main(ARGV + ["--out", str(out), "--overwrite", "--edges", "2"]) == 130
    assert f"{out} keeps the run that was there" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_sigint_during_the_report(reference, tmp_path, capsys):
    out = tmp_path / "run"
    proc = _driven("report", "SIGINT", out)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("circuitfind: interrupted; nothing was written to")
    assert "Traceback" not in proc.stderr and not any(tmp_path.iterdir())
    assert main(ARGV + ["--out", str(out)]) == 0
    _same_result(out, reference)


@pytest.mark.parametrize("phase", ["scoring", "curve", "report"])
def test_sigkill_leaves_nothing_taken_for_a_run(phase, reference, tmp_path, capsys, caplog):
    out = tmp_path / "run"
    proc = _driven(phase, "SIGKILL", out)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # nothing at the run's name
    left = list(tmp_path.iterdir())  # killed while writing: the unfinished run, marked, beside it
    assert all(p.name.startswith(".tmp-run-") and (p / ".incomplete").exists() for p in left)
    assert len(left) == (1 if phase == "report" else 0)
    if phase != "report":
        return  # nothing was written: as if it never ran
    for d in left:  # and nothing reads it as a run
        assert main(["report", str(d)]) == 2
        assert main(["compare", str(reference), str(d)]) == 2
        assert "is an unfinished run" in capsys.readouterr().err
    assert main(ARGV + ["--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # the leftover removed, and said so in one line
    assert err.count("the unfinished run of an interrupted discover") == 1
    assert (out / "report.html").exists()
    _same_result(out, reference)
