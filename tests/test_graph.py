"""Graph counts match the published graphs; names round-trip; node view; networkx export."""

from __future__ import annotations

import pytest
import torch
import transformers

from circuitfind.graph import Graph


def test_gpt2_small_counts():
    g = Graph.from_config(transformers.GPT2Config())
    assert (len(g.senders), len(g.receivers), g.n_edges) == (157, 445, 32_491)


def test_qwen25_05b_counts():
    cfg = transformers.Qwen2Config(num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                   hidden_size=896)
    assert Graph.from_config(cfg).n_edges == 179_749


def test_llama31_8b_counts():
    cfg = transformers.LlamaConfig(num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8)
    assert Graph.from_config(cfg).n_edges == 1_592_881


def test_parallel_blocks_have_no_head_to_own_mlp_edge():
    g = Graph(n_layers=2, n_heads=2, parallel=True)
    with pytest.raises(Exception, match="not an edge"):
        g.edge_index("a1.h0->m1")
    assert Graph(2, 2).edge_index("a1.h0->m1") == (Graph(2, 2).mlp_receiver(1), Graph(2, 2).head_sender(1, 0))
    assert g.n_edges == Graph(2, 2).n_edges - 2 * 2


def test_edges_only_go_forward():
    g = Graph(3, 2)
    with pytest.raises(Exception, match="not an edge"):
        g.edge_index("a1.h0->a1.h1<q>")
    with pytest.raises(Exception, match="not an edge name"):
        g.edge_index("a9.h0->logits")


def test_names_round_trip():
    g = Graph(3, 4)
    names = g.edge_names()
    assert len(names) == g.n_edges
    assert [g.edge_name(*g.edge_index(n)) for n in names] == names
    assert torch.equal(g.mask_from_edges(names), g.edge_mask)


def test_receiver_nodes_and_layers():
    g = Graph(2, 3)
    assert g.receivers[g.qkv_receiver(1, "k", 2)] == "a1.h2<k>"
    assert g.senders[int(g.receiver_node[g.qkv_receiver(1, "k", 2)])] == "a1.h2"
    assert int(g.receiver_layer[g.logits_receiver]) == 2


def test_node_view_keeps_all_out_edges():
    g = Graph(2, 2)
    nodes = torch.zeros(g.n_senders, dtype=torch.bool)
    nodes[g.head_sender(0, 1)] = True
    edges = g.nodes_to_edges(nodes)
    assert set(g.edge_names(edges)) == {n for n in g.edge_names() if n.startswith("a0.h1->")}


def test_networkx_paths():
    import networkx as nx
    g = Graph(2, 2)
    nxg = g.to_networkx()
    assert nx.has_path(nxg, "input", "logits")
    assert nxg.number_of_edges() == g.n_edges + 3 * 2 * 2  # plus the internal <q|k|v> → head edges
