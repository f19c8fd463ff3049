"""The exported tracr models compute their programs on every input of the domain; their ground
truth is graded by the methods."""

from __future__ import annotations

import itertools

import pytest
import torch

import circuitfind as cf
from circuitfind.models.zoo import tracr_meta


def _all_inputs(alphabet, max_len):
    for n in range(1, max_len + 1):
        yield from itertools.product(alphabet, repeat=n)


def test_reverse_on_every_input():
    model, meta = cf.load_model("tracr-reverse"), tracr_meta("tracr-reverse")
    enc, values = meta["input_encoding"], meta["output_values"]
    checked = 0
    for seq in _all_inputs(["a", "b", "c"], meta["max_seq_len"]):
        tokens = torch.tensor([[enc["BOS"]] + [enc[t] for t in seq]])
        out = model(tokens)[0, 1:].argmax(-1).tolist()
        assert [values[i] for i in out] == list(reversed(seq))
        checked += 1
    assert checked == 3 + 9 + 27 + 81 + 243


def test_xproportion_on_every_input():
    model, meta = cf.load_model("tracr-xproportion"), tracr_meta("tracr-xproportion")
    enc = meta["input_encoding"]
    for seq in _all_inputs(["w", "x", "y", "z"], meta["max_seq_len"]):
        tokens = torch.tensor([[enc["BOS"]] + [enc[t] for t in seq]])
        out = model(tokens)[0, 1:, 0]
        want = torch.tensor([seq[:i + 1].count("x") / (i + 1) for i in range(len(seq))])
        assert torch.allclose(out, want, atol=1e-3)


@pytest.mark.parametrize("name", ["tracr-reverse", "tracr-xproportion"])
def test_ground_truth_is_a_connected_circuit(name):
    model = cf.load_model(name)
    truth = model.ground_truth[name]
    mask = model.graph.mask_from_edges(truth)
    from circuitfind.prune import without_dangling
    assert torch.equal(without_dangling(model.graph, mask), mask)  # every edge on an input → logits path
    assert cf.load_task(name).ground_truth(model) == truth


@pytest.mark.parametrize("name", ["tracr-reverse", "tracr-xproportion"])
def test_exact_patching_is_graded_against_the_ground_truth(name):
    model = cf.load_model(name).double()
    task = cf.load_task(name, n=40)
    scores = cf.score_edges(model, task, "exact", ablation="corrupted")
    auc = cf.roc_auc(scores, model.ground_truth[name])
    assert 0.5 < auc <= 1.0


def test_eap_ig_recovers_the_reverse_circuit_with_zero_ablation(tmp_path, capsys):
    """Same-length corruption leaves reverse's length/index path unchanged; zero ablation sees it all."""
    model = cf.load_model("tracr-reverse").double()
    truth = model.ground_truth["tracr-reverse"]
    task = cf.load_task("tracr-reverse", n=60)
    scores = cf.score_edges(model, task, "eap-ig", ablation="zero")
    assert cf.roc_auc(scores, truth) == 1.0
    run = cf.discover(model, task, method="eap-ig", ablation="zero", out=tmp_path / "run", quiet=True)
    assert set(run.circuit.edges()) == set(truth) and run.result["faithfulness"] == pytest.approx(1.0)
    from circuitfind.cli import main  # the command line prints the grade against the true circuit
    assert main(["--quiet", "discover", "--model", "tracr-reverse", "--task", "tracr-reverse", "--method", "eap-ig",
                 "--ablation", "zero", "-n", "60", "--no-report"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(", ROC AUC 1.000")


def test_tokens_are_named_in_reports_and_lenses():
    """tracr inputs and outputs have names (BOS, a, b, c / the output values), not bare ids."""
    from circuitfind.inspect import logit_lens
    from circuitfind.report.data import collect

    model = cf.load_model("tracr-reverse")
    data = collect(model, cf.load_task("tracr-reverse", n=4, split="test"))
    assert data["examples"][0]["clean"].startswith("BOS ") and data["examples"][0]["correct"] in ("a", "b", "c")
    rows = logit_lens(model, "ids:0,1,2", "resid:4", k=1)
    assert [r.token for r in rows] == [model.token_names[i] for i in (0, 1, 2)]
    assert rows[-1].promoted[0][0] in model.output_names
