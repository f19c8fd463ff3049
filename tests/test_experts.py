"""The expert-level graph of a mixture of experts (`load_model(..., experts=True)`): each expert a sender."""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from circuitfind.engine.ablation import ablated_outputs
from circuitfind.engine.attribution import attribute
from circuitfind.engine.patching import Inputs, clean_logits, edge_effects, masked_forward
from circuitfind.errors import ConfigError
from circuitfind.graph import Graph
from tests.conftest import VOCAB, tiny_hf
from tests.reference import reference_masked_logits, reference_scores

MOE_FAMILIES = ["mixtral", "qwen2_moe", "gpt_oss"]  # (Qwen-MoE: with a shared expert; gpt-oss: biased experts)


def _models(family):
    """The same weights as the node graph and as the expert-level graph (float64)."""
    hf = tiny_hf(family)
    return cf.from_hf(hf).double(), cf.from_hf(hf, experts=True).double()


@pytest.fixture(params=MOE_FAMILIES)
def pair(request):
    return _models(request.param)


def _pair_inputs(batch=3, pos=6):
    g = torch.Generator().manual_seed(11)
    clean = torch.randint(3, VOCAB, (batch, pos), generator=g)
    corrupt = torch.randint(3, VOCAB, (batch, pos), generator=g)
    mask = torch.ones(batch, pos, dtype=torch.long)
    mask[1, :2] = 0
    clean[1, :2] = corrupt[1, :2] = 0
    return Inputs.of(clean, mask), Inputs.of(corrupt, mask)


def _objective(logits):  # [k, batch, vocab] or [batch, vocab] → [k] or scalar
    return logits[..., 3].mean(-1) - logits[..., 5].mean(-1)


def test_expert_graph_names_and_counts():
    g = Graph(2, 2, n_experts=3, shared_expert=True)
    assert g.senders[:8] == ["input", "a0.h0", "a0.h1", "m0.e0", "m0.e1", "m0.e2", "m0.shared", "a1.h0"]
    layer0 = g.receivers[: g.receivers_per_layer]
    assert layer0[6:] == ["m0.e0<in>", "m0.e1<in>", "m0.e2<in>", "m0.e0<router>", "m0.e1<router>", "m0.e2<router>",
                          "m0.shared"]
    # each receiver feeds its own expert; an MLP receiver reads the input and its layer's heads
    assert g.senders[int(g.receiver_node[g.expert_receiver(0, "router", 2)])] == "m0.e2"
    assert g.edge_index("a0.h1->m0.e1<router>") and g.edge_index("m0.shared->a1.h0<k>")
    with pytest.raises(ConfigError, match="not an edge"):
        g.edge_index("m0.e0->m0.e1<in>")  # experts of one block read what was written before the block
    per_mlp_receiver = 1 + 2  # input + the layer's heads (layer 0)
    assert int(g.edge_mask[g.mlp_receiver(0)].sum()) == per_mlp_receiver
    node = Graph(2, 2)
    assert g.n_senders == node.n_senders + 2 * 3 and g.n_receivers == node.n_receivers + 2 * 6


def test_experts_load_option_and_refusal(pair):
    node, expert = pair
    assert node.graph.n_experts == 0 and expert.graph.n_experts == node.cfg.n_experts
    assert expert.graph.shared_expert == bool(node.cfg.d_mlp_shared)
    with pytest.raises(ConfigError, match="dense MLPs"):
        cf.from_hf(tiny_hf("llama"), experts=True)
    with pytest.raises(ConfigError, match="True or False"):
        cf.from_hf(tiny_hf("mixtral"), experts="yes")


def test_every_mask_on_is_the_model_and_every_mask_off_the_ablated_run(pair):
    _, model = pair
    clean, corrupt = _pair_inputs()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    g = model.graph
    ones = torch.ones(g.n_receivers, g.n_senders, dtype=torch.float64)
    assert (masked_forward(model, clean, abl, ones) - clean_logits(model, clean)).abs().max() <= 1e-10
    assert (masked_forward(model, clean, abl, 0 * ones) - clean_logits(model, corrupt)).abs().max() <= 1e-10


@pytest.mark.parametrize("ablation", ["corrupted", "mean", "zero"])
def test_random_masks_match_the_slow_dense_reference(pair, ablation):
    """The reference routes every expert from its own router input and runs every expert on every token."""
    _, model = pair
    clean, corrupt = _pair_inputs()
    abl = ablated_outputs(model, ablation, clean, corrupt)
    g = model.graph
    for seed, density in ((0, 0.5), (1, 0.9), (2, 0.1)):
        gen = torch.Generator().manual_seed(seed)
        mask = (torch.rand(g.n_receivers, g.n_senders, generator=gen) < density).double() * g.edge_mask
        got = masked_forward(model, clean, abl, mask)
        want = reference_masked_logits(model, clean.tokens, clean.attention_mask, clean.answer_pos, abl, mask)
        assert (got - want).abs().max().item() <= 1e-9
    masks = torch.stack([mask, mask.flip(0) * g.edge_mask, g.edge_mask.double()])  # several masks in one pass
    for i, got in enumerate(masked_forward(model, clean, abl, masks)):
        assert (got - masked_forward(model, clean, abl, masks[i])).abs().max() <= 1e-10


def test_eap_on_the_expert_graph_equals_the_slow_reference(pair):
    _, model = pair
    clean, corrupt = _pair_inputs()
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    D = torch.stack([o for o in _clean_outputs(model, clean)]) - abl
    got = attribute(model, clean, abl, _objective)
    want = reference_scores(model, clean, abl, _objective, D)
    assert (got - want).abs().max() <= 1e-6 * want.abs().max()


def _clean_outputs(model, inputs):
    from circuitfind.engine.patching import sender_outputs
    return sender_outputs(model, inputs)


def _node_part(name: str) -> str:
    """An expert-graph sender or receiver → the node-graph one it is part of (`m1.e0<in>` → `m1`)."""
    return name.split("<")[0].split(".")[0] if name.startswith("m") else name


def _aggregation(node_graph, expert_graph):
    """(R [node dst, expert dst], S [node src, expert src]): 1 where an expert-graph receiver or sender is part of
    a node-graph one (a block's MLP receiver: every expert's input and router input, and the shared expert's)."""
    R = torch.zeros(node_graph.n_receivers, expert_graph.n_receivers, dtype=torch.float64)
    S = torch.zeros(node_graph.n_senders, expert_graph.n_senders, dtype=torch.float64)
    for i, r in enumerate(expert_graph.receivers):
        R[node_graph.receivers.index(_node_part(r)), i] = 1
    for i, s in enumerate(expert_graph.senders):
        S[node_graph.senders.index(_node_part(s)), i] = 1
    return R, S


def _routes(model, inputs, layer):
    """The top-k experts each token is routed to at a layer in the plain forward [batch, pos, top_k] (sorted)."""
    seen = {}
    with model.hooks({f"blocks.{layer}.hook_resid_mid": lambda x, name: seen.setdefault("x", x)}):
        model(inputs.tokens, inputs.attention_mask)
    normed = model.blocks[layer].ln2(seen["x"]).reshape(-1, model.cfg.d_model)
    _, experts = model.blocks[layer].mlp.route(normed)
    return experts.sort(-1).values.view(*inputs.tokens.shape, -1)


def test_eap_summed_over_a_blocks_experts_equals_the_blocks_eap(pair):
    """Exact, also where the corrupted prompts route tokens to other experts (asserted to happen here): the
    experts' differences D sum to the block's, and the gradient at the block's input is the sum of its
    experts' input and router-input gradients at the clean point, where a first-order score is taken."""
    node, expert = pair
    clean, corrupt = _pair_inputs()
    assert any(bool((_routes(node, clean, l) != _routes(node, corrupt, l)).any()) for l in range(node.cfg.n_layers))
    R, S = _aggregation(node.graph, expert.graph)
    node_scores = attribute(node, clean, ablated_outputs(node, "corrupted", clean, corrupt), _objective).double()
    expert_scores = attribute(expert, clean, ablated_outputs(expert, "corrupted", clean, corrupt), _objective).double()
    summed = R @ expert_scores @ S.T
    assert (summed - node_scores).abs().max() <= 1e-6 * node_scores.abs().max()  # (scores are float32)


def test_exact_patching_of_every_part_of_a_node_edge_is_that_edges_patch(pair):
    """Patching every expert-graph edge that makes up a node-graph edge is that edge's patch, exactly, routing
    recomputed from the patched input (it changes here: the EAP test above asserts it)."""
    node, expert = pair
    clean, corrupt = _pair_inputs()
    R, S = _aggregation(node.graph, expert.graph)
    abl_n = ablated_outputs(node, "corrupted", clean, corrupt)
    abl_e = ablated_outputs(expert, "corrupted", clean, corrupt)
    for name in ("m0->logits", "a0.h1->m1", "m0->m1", "input->m0"):
        dst, src = node.graph.edge_index(name)
        mask_n = node.graph.edge_mask.double()
        mask_n[dst, src] = 0
        mask_e = expert.graph.edge_mask.double() * (1 - R[dst][:, None] * S[src][None, :])
        got = masked_forward(expert, clean, abl_e, mask_e)
        want = masked_forward(node, clean, abl_n, mask_n)
        assert (got - want).abs().max() <= 1e-10
        assert (want - clean_logits(node, clean)).abs().max() > 1e-4  # (the patch does something)
    effects = edge_effects(expert, clean, abl_e, _objective)  # exact patching runs on the expert graph
    for dst, src in [(int(d), int(s)) for d, s in expert.graph.edge_mask.nonzero()[::7]]:
        mask = expert.graph.edge_mask.double()
        mask[dst, src] = 0
        want = _objective(masked_forward(expert, clean, abl_e, mask)[None]) \
            - _objective(clean_logits(expert, clean)[None])
        assert abs(float(effects[dst, src]) - float(want)) <= 1e-6


def test_a_run_on_the_expert_graph_saves_reads_back_and_draws_its_experts(tmp_path):
    model = cf.from_hf(tiny_hf("qwen2_moe"), experts=True)
    task = cf.load_task("induction", n=4, metric="logit-diff")
    run = cf.discover(model, task, "eap", edges=40, out=tmp_path / "run", report=True, quiet=True)
    circuit = cf.Circuit.load(tmp_path / "run" / "circuit.json")
    assert circuit.graph == model.graph and torch.equal(circuit.mask, run.circuit.mask)
    assert cf.EdgeScores.load(tmp_path / "run").graph == model.graph
    page = (tmp_path / "run" / "report.html").read_text()
    assert '"m1.e3\\u003crouter\\u003e"' in page and '"m0.shared"' in page  # (JSON in the page: < escaped)
    from circuitfind.interop import to_eap_ig
    with pytest.raises(ConfigError, match="no expert nodes"):
        to_eap_ig(run.scores)
    from circuitfind.circuit import graph_from
    with pytest.raises(ConfigError, match="damaged"):
        graph_from({"graph": {"n_layers": 2, "n_heads": 4, "shared_expert": True}}, "x.json")
