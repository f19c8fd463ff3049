"""discover: Python and CLI agree, and the run directory holds what DESIGN.md promises."""

from __future__ import annotations

import json
from unittest import mock

import pytest
import torch

import circuitfind as cf
from circuitfind.circuit import Circuit, EdgeScores
from circuitfind.cli import main
from circuitfind.evaluate import MIB_FRACTIONS
from tests.conftest import tiny_hf
from tests.test_tasks import USER_TASK, _word_model

RESULT_KEYS = {"model", "task", "method", "ablation", "n_edges_total", "n_edges", "faithfulness", "cpr", "cmd",
               "roc_auc"}


def test_discover_writes_a_run_directory(tmp_path):
    model = cf.from_hf(tiny_hf("llama"))
    run = cf.discover(model, "induction", method="eap-ig", out=tmp_path / "run", n=8, quiet=True)  # KL: not eap
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert RESULT_KEYS <= set(result) and result == json.loads(json.dumps(run.result))
    assert result["n_edges"] == run.circuit.n_edges and result["n_edges_total"] == model.graph.n_edges
    assert result["n_nodes"] == len(run.circuit.nodes()) == int(run.circuit.mask.any(0).sum())
    assert torch.equal(EdgeScores.load(tmp_path / "run").scores, run.scores.scores)
    assert torch.equal(Circuit.load(tmp_path / "run" / "circuit.json").mask, run.circuit.mask)
    reached = [f for f in result["curve"]["faithfulness_absolute"] if f >= 0.9]
    assert result["faithfulness"] >= 0.9 or not reached
    assert not list((tmp_path / "run").glob(".*tmp"))  # nothing half-written
    assert result["n"] == 8
    assert result["provenance"]["command"] is None  # called from Python: no command line to record
    assert result["provenance"]["options"] == {} and result["provenance"]["batch_size"] is None
    assert result["target"] == 0.9 and result["sized_by"] in ("target", "target not reached: all edges")
    shown = repr(run)  # what a notebook prints: one line, not the scores tensor
    assert "\n" not in shown and "tensor" not in shown and len(shown) < 300
    assert f"{run.circuit.n_edges} of {model.graph.n_edges} edges" in shown and "/ induction / eap-ig" in shown
    assert f"faithfulness {result['faithfulness']:.3f}" in shown and str(tmp_path / "run") in shown
    with pytest.raises(cf.ConfigError, match="loaded with n=6; n=8 applies only to a task given by name"):
        cf.discover(model, cf.load_task("induction", n=6), method="eap", n=8)  # would run on 6 silently
    (tmp_path / "a-file").write_text("")
    for out, says in ((tmp_path / "a-file", "is a file"), (tmp_path / "a-file" / "run", "not a writable directory")):
        with pytest.raises(cf.ConfigError, match=says):  # before scoring, not when the run is written
            with mock.patch("circuitfind.discover.score_edges", side_effect=AssertionError("scored")):
                cf.discover(model, "induction", method="eap-ig", n=8, out=out)
    with pytest.raises(cf.ConfigError, match="the test split has 1"):  # before scoring, not after
        with mock.patch("circuitfind.discover.score_edges", side_effect=AssertionError("scored")):
            cf.discover(model, "induction", method="eap", ablation="resample", n=4)


def test_cli_discover_with_a_user_task(tmp_path, capsys):
    model = _word_model()
    model_dir = tmp_path / "word-model"
    hf = tiny_hf("gpt2", vocab_size=model.cfg.d_vocab)
    hf.save_pretrained(model_dir)
    model.tokenizer.save_pretrained(model_dir)
    task_file = tmp_path / "my_task.py"
    task_file.write_text(USER_TASK)
    code = main(["discover", "--model", str(model_dir), "--task", f"{task_file}:Greeting", "--method", "eap-ig",
                 "--option", "steps=2", "-n", "8", "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "faithfulness" in out and (tmp_path / "run" / "result.json").exists()
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["task"] == "greeting" and result["method"] == "eap-ig"
    # the command that made the run, not the argv of whatever process called main()
    command = (f"circuitfind discover --model {model_dir} --task {task_file}:Greeting --method eap-ig "
               f"--option steps=2 -n 8 --out {tmp_path / 'run'} --quiet")
    assert result["provenance"]["command"] == command
    assert result["provenance"]["dtype"] == "float32" and result["provenance"]["device"] == "cpu"


def test_cli_discover_says_when_only_the_whole_graph_reaches_the_target(capsys):
    assert main(["--quiet", "discover", "--model", "toy-lm", "--task", "ioi", "--method", "eap", "-n", "8",
                 "--target", "1.5", "--no-report"]) == 0
    captured = capsys.readouterr()
    assert "479 of 479 edges" in captured.out
    assert "circuitfind: warning: no MIB size below the whole graph reached faithfulness 1.5" in captured.err


def test_cli_discover_bad_method(capsys):
    assert main(["discover", "--model", "/nope", "--task", "ioi", "--method", "magic"]) == 2
    assert "unknown method 'magic'" in capsys.readouterr().err


def test_another_metric_holds_for_scoring_and_for_the_test_split(tmp_path, capsys):
    """load_task(metric=) / --metric: the test split that discover evaluates on keeps the metric, so
    metric_full is the full model's logit difference, not greater-than's own prob-diff."""
    model = cf.load_model("toy-lm")
    task = cf.load_task("greater-than", n=12, metric="logit-diff")
    assert type(task).metric == "prob-diff" and task.with_split("test").metric == "logit-diff"
    run = cf.discover(model, task, method="eap", edges=20, quiet=True, report=False)
    test = cf.load_task("greater-than", n=3, split="test").batch(model)  # discover's test split: n // 4
    logits = model(test.clean.tokens, test.clean.attention_mask, at=test.clean.answer_pos)  # [batch, vocab]
    t = test.targets  # answer sets [batch, n] padded with −1: years above the start year, and the rest
    by_hand = torch.stack([row[c[c >= 0]].mean() - row[w[w >= 0]].mean()
                           for row, c, w in zip(logits, t.correct, t.wrong)]).mean()
    assert run.result["metric_name"] == "logit-diff"
    assert run.result["metric"]["metric_full"] == pytest.approx(float(by_hand), rel=1e-5)

    code = main(["discover", "--model", "toy-lm", "--task", "greater-than", "--metric", "logit-diff", "--method", "eap",
                 "-n", "12", "--edges", "20", "--out", str(tmp_path / "run"), "--no-report", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0 and "greater-than (logit-diff)" in captured.out and "whole graph" not in captured.err
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["metric"] == pytest.approx(run.result["metric"])  # CLI and Python agree

    assert main(["discover", "--model", "toy-lm", "--task", "greater-than", "--metric", "accuracy"]) == 2
    assert "unknown metric 'accuracy'" in capsys.readouterr().err


def test_an_unreachable_target_is_said_not_hidden(caplog):
    model = cf.from_hf(tiny_hf("gpt2"))
    with caplog.at_level("WARNING", logger="circuitfind.discover"):
        run = cf.discover(model, "induction", method="eap-ig", n=8, target=5.0, quiet=True, report=False)
    assert run.result["sized_by"] == "target not reached: all edges" and run.circuit.n_edges > 0
    assert "no MIB size below the whole graph reached faithfulness 5.0" in caplog.text
    fixed = cf.discover(model, "induction", method="eap-ig", n=8, edges=3, quiet=True, report=False)
    assert fixed.result["sized_by"] == "edges"


def test_a_target_sized_circuit_takes_its_figures_from_the_curve():
    """Sized by the target, the circuit is one the curve measured: no second evaluation, the same figures."""
    model = cf.load_model("toy-lm")
    with mock.patch("circuitfind.discover.evaluate", side_effect=AssertionError("evaluated twice")):
        run = cf.discover(model, "ioi", method="eap", n=20, quiet=True, report=False)
    assert run.result["sized_by"] == "target"
    # the smallest MIB size whose circuit (ranked by |score|) reaches the target
    curve = run.result["curve"]["faithfulness_absolute"]
    first = next(i for i, f in enumerate(curve) if f >= 0.9)
    assert first > 0 and run.circuit.n_edges == cf.prune(run.scores, edges=int(MIB_FRACTIONS[first] * 479)).n_edges
    again = cf.evaluate(model, cf.load_task("ioi", n=20).with_split("test", n=5), run.circuit)
    # (fp32: the curve ran it batched with other circuits, in another order of sums)
    assert run.result["faithfulness"] == pytest.approx(again["faithfulness"], abs=1e-5)
    assert run.result["metric"] == pytest.approx({k: again[k] for k in ("metric_circuit", "metric_full",
                                                                        "metric_empty")}, abs=1e-5)
    fixed = cf.discover(model, "ioi", method="eap", n=20, edges=40, quiet=True, report=False)  # any size: evaluated
    assert fixed.result["faithfulness"] == pytest.approx(cf.evaluate(model, cf.load_task("ioi", n=20).with_split(
        "test", n=5), fixed.circuit)["faithfulness"], abs=1e-9)
    assert run.result["n_edges"] != 40  # (so the second call did not size to the first's circuit)


def test_discover_a_batch_of_examples_at_a_time(tmp_path, capsys):
    """--batch-size / batch_size=: scoring, the curve and the evaluation take the task a batch at a
    time and find the same circuit."""
    model = cf.load_model("toy-lm")
    whole = cf.discover(model, "ioi", method="eap-ig", n=20, quiet=True, report=False)
    assert main(["--quiet", "discover", "--model", "toy-lm", "--task", "ioi", "--method", "eap-ig", "-n", "20",
                 "--batch-size", "6", "--no-report", "--out", str(tmp_path / "run")]) == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["n_edges"] == whole.result["n_edges"]
    assert result["faithfulness"] == pytest.approx(whole.result["faithfulness"], abs=1e-5)
    assert json.loads((tmp_path / "run" / "scores.json").read_text())["config"]["batch_size"] == 6
    assert main(["discover", "--model", "toy-lm", "--task", "ioi", "--method", "edge-pruning", "-n", "8",
                 "--batch-size", "4"]) == 2  # training takes the task whole
    assert "takes the task whole" in capsys.readouterr().err


def test_acdc_discovers_its_own_circuit(caplog):
    """discover with ACDC returns the edges ACDC kept at its threshold, evaluated on the test split; with
    edges= or receivers= (edges left untried) it sizes the circuit as for every method; none kept is said."""
    model = cf.load_model("toy-lm")
    run = cf.discover(model, "ioi", method="acdc", n=8, threshold=0.02, quiet=True, report=False)
    kept = cf.prune(run.scores, threshold=0.02, absolute=False)
    assert run.result["sized_by"] == "acdc threshold" and 0 < run.circuit.n_edges < model.graph.n_edges
    assert torch.equal(run.circuit.mask, kept.mask)
    again = cf.evaluate(model, cf.load_task("ioi", n=8).with_split("test", n=2), run.circuit)
    assert run.result["faithfulness"] == pytest.approx(again["faithfulness"], abs=1e-6)
    fixed = cf.discover(model, "ioi", method="acdc", n=8, threshold=0.02, edges=5, quiet=True, report=False)
    assert fixed.result["sized_by"] == "edges" and fixed.circuit.n_edges <= 5
    some = cf.discover(model, "ioi", method="acdc", n=8, threshold=0.02, receivers=["logits"], quiet=True,
                       report=False)
    assert some.result["sized_by"].startswith("target")
    with caplog.at_level("WARNING", logger="circuitfind.discover"):
        none = cf.discover(model, "ioi", method="acdc", n=8, threshold=100.0, quiet=True, report=False)
    assert none.circuit.n_edges == 0 and "ACDC's circuit at threshold 100.0 is empty" in caplog.text
