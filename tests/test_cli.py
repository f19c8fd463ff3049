"""The command line mirrors the Python API and reports bad input as a clear error."""

from __future__ import annotations

import subprocess
import sys

import circuitfind as cf
from circuitfind.cli import main
from tests.conftest import tiny_hf


def test_zoo_lists_every_entry(capsys):
    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    for name in ("gpt2", "pythia-70m", "Qwen2.5-0.5B", "Llama-3.2-1B", "gemma-2-2b"):
        assert name in out
    assert "32,491" in out  # gpt2's edge count, from the entry's shape
    assert "10 edges (compiled; 13 by weights)" in out  # tracr-reverse's ground truths: functional (ACDC's), weights


def test_graph_of_a_local_directory(tmp_path, capsys):
    tiny_hf("gpt_neox").save_pretrained(tmp_path / "m")
    assert main(["graph", "--model", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert str(cf.load_model(str(tmp_path / "m")).graph) in out


def test_quiet_hides_the_loading_bar_of_a_local_directory(tmp_path, capfd):
    """--quiet means no progress bar at all, transformers' "Loading weights" included (restored after)."""
    from transformers.utils import logging as hf_logging

    tiny_hf("gpt_neox").save_pretrained(tmp_path / "m")
    before = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()  # on, as for a user
    try:
        capfd.readouterr()
        assert main(["--quiet", "graph", "--model", str(tmp_path / "m")]) == 0
        assert "Loading" not in capfd.readouterr().err
        assert hf_logging.is_progress_bar_enabled()
        assert main(["graph", "--model", str(tmp_path / "m")]) == 0
        assert "Loading" in capfd.readouterr().err  # shown without --quiet: the test can fail
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()


def test_bad_model_is_a_clear_error(capsys):
    assert main(["graph", "--model", "/no/such/model"]) == 2
    assert "ModelNotFoundError" in capsys.readouterr().err


def test_console_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "circuitfind.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "zoo" in out.stdout


def test_demo_runs(capsys):
    from circuitfind.demo import main as demo
    demo()
    out = capsys.readouterr().out
    assert "faithfulness" in out and "top edges" in out


def test_option_values_parse_as_the_config_types_expect():
    from circuitfind.cli import _option_value
    assert _option_value("10") == 10 and _option_value("0.5") == 0.5 and _option_value("True") is True
    assert _option_value("task") == "task"
    assert _option_value("52,51") == [52, 51]  # ACDC's receivers: a list, as the config's type-check takes it


def test_a_reader_that_leaves_ends_the_command_quietly():
    """`circuitfind ... | head`: the pipe closes under the command, which stops without a traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "circuitfind.cli", "tasks", "show", "ioi", "-n", "3000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader leaves after one line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and first.startswith(b"ioi: ") and err == ""
