"""EAP-IG graph JSON and MIB submission: what is written reads back unchanged."""

from __future__ import annotations

import json

import pytest
import torch

import circuitfind as cf
from circuitfind.circuit import EdgeScores
from circuitfind.errors import ConfigError
from circuitfind.graph import Graph
from circuitfind.interop import (
    from_eap_ig,
    read_mib_submission,
    save_eap_ig,
    to_eap_ig,
    write_mib_submission,
)


def _scores(graph):
    torch.manual_seed(0)
    return EdgeScores(torch.randn(graph.n_receivers, graph.n_senders), graph, method="eap", model="m", task="t")


@pytest.mark.parametrize("parallel", [False, True])
def test_round_trip(tmp_path, parallel):
    g = Graph(3, 4, parallel)
    scores = _scores(g)
    circuit = cf.prune(scores, edges=25)
    path = save_eap_ig(tmp_path / "graph.json", scores, circuit, d_model=64)
    back_scores, back_circuit = from_eap_ig(path)
    assert torch.equal(back_scores.scores, scores.scores)
    assert torch.equal(back_circuit.mask, circuit.mask)
    data = json.loads(path.read_text())
    assert data["cfg"] == {"n_layers": 3, "n_heads": 4, "parallel_attn_mlp": parallel, "d_model": 64}
    assert len(data["edges"]) == g.n_edges and len(data["nodes"]) == g.n_senders + 1
    in_graph = {n for n, v in data["nodes"].items() if v["in_graph"]}
    assert in_graph == set(circuit.nodes()) | {"logits"}


def test_gpt2_graph_has_the_eap_ig_edge_names():
    data = to_eap_ig(_scores(Graph(12, 12)))
    assert len(data["edges"]) == 32491
    for name in ("input->a0.h0<q>", "a0.h1->m0", "m10->a11.h11<v>", "m11->logits", "a11.h3->logits"):
        assert name in data["edges"]


def test_mib_submission_round_trip(tmp_path):
    g = Graph(2, 2)
    entries = {("ioi", "gpt2"): _scores(g), ("mcqa", "qwen2.5"): _scores(Graph(2, 3))}
    write_mib_submission(tmp_path, entries)
    assert (tmp_path / "ioi_gpt2" / "importances.json").exists()
    back = read_mib_submission(tmp_path)
    assert set(back) == set(entries)
    for key, s in entries.items():
        assert torch.equal(back[key].scores, s.scores)
    with pytest.raises(ConfigError, match="must not contain"):
        write_mib_submission(tmp_path, {("greater_than", "gpt2"): _scores(g)})


def test_bad_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="not an EAP-IG graph JSON"):
        from_eap_ig({"edges": {}})
    data = to_eap_ig(_scores(Graph(2, 2)))
    data["edges"].pop("m1->logits")
    with pytest.raises(ConfigError, match="lists"):
        from_eap_ig(data)
    data["edges"]["a5.h0->logits"] = {"score": 1.0, "in_graph": True}
    with pytest.raises(ConfigError, match="not an edge name"):
        from_eap_ig(data)


def test_export_to_a_mib_folder_from_the_command_line(tmp_path):
    from circuitfind.cli import main

    run = cf.discover(cf.load_model("toy-induction"), "induction", method="eap-ig", n=10, edges=4, out=tmp_path / "run",
                      report=False, quiet=True)
    assert run.scores.scores.abs().max() > 1e-3  # a round trip of zeros proves nothing
    assert main(["export", str(tmp_path / "run"), "--mib", str(tmp_path / "mib")]) == 0
    back = read_mib_submission(tmp_path / "mib")
    assert list(back) == [("induction", "toy-induction")]
    assert torch.equal(back["induction", "toy-induction"].scores, run.scores.scores)
    assert main(["export", str(tmp_path / "run")]) == 2  # nowhere to write
    before = (tmp_path / "mib" / "induction_toy-induction" / "importances.json").read_bytes()
    assert main(["export", str(tmp_path / "run"), "--mib", str(tmp_path / "mib")]) == 2  # an earlier export is kept
    assert (tmp_path / "mib" / "induction_toy-induction" / "importances.json").read_bytes() == before
    assert main(["export", str(tmp_path / "run"), "--eap-ig", str(tmp_path / "g.json")]) == 0
    assert main(["export", str(tmp_path / "run"), "--eap-ig", str(tmp_path / "g.json")]) == 2
    assert main(["export", str(tmp_path / "run"), "--eap-ig", str(tmp_path / "g.json"), "--overwrite"]) == 0
