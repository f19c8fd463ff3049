"""The token-by-layer flow graph against a plain loop over heads and tokens, and its pruning."""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from circuitfind import inspect as ci
from circuitfind.inspect.token_flow import _weights
from tests.conftest import tiny_hf

PROMPT = "When Mary and John went to the store , John gave a drink to"


@pytest.fixture(scope="module")
def toy():
    return cf.load_model("toy-lm")


@pytest.mark.parametrize("family", ["gpt2", "llama"])  # (Llama: grouped-query heads, no attention bias)
def test_weights_are_normalised_proximities_of_parts_that_sum_to_each_state(family):
    """The parts, built here head by head and token by token from the cache, add up (with the biases) to the
    residual states, and the graph's weights are their proximities normalised per state."""
    model = cf.from_hf(tiny_hf(family)).double()
    tokens = torch.randint(3, 90, (1, 7), generator=torch.Generator().manual_seed(0))
    weights, _ = _weights(model, tokens)
    _, cache = model.run_with_cache(tokens)
    for l, block in enumerate(model.blocks):
        attn = block.attn
        pre, mid, post = (cache[f"blocks.{l}.hook_resid_{n}"][0] for n in ("pre", "mid", "post"))
        A, v = cache[f"blocks.{l}.attn.hook_pattern"][0], cache[f"blocks.{l}.attn.hook_v"][0]
        for j in range(7):
            parts = [pre[j]]
            for i in range(7):
                parts.append(sum(A[h, j, i] * v[i, h // model.cfg.group_size] @ attn.W_O[h]
                                 for h in range(model.cfg.n_heads)))
            bias = attn.b_o if attn.b_o is not None else 0
            assert torch.allclose(sum(parts) + bias, mid[j], atol=1e-9)
            prox = torch.stack([(mid[j].abs().sum() - (mid[j] - c).abs().sum()).clamp(min=0) for c in parts])
            want = prox / prox.sum()
            got = torch.cat([weights["resid_pre"][l][j, None], weights["attn"][l][j]])
            assert torch.allclose(got, want, atol=1e-9)
            ffn = post[j] - mid[j]
            prox = torch.stack([(post[j].abs().sum() - (post[j] - c).abs().sum()).clamp(min=0) for c in (mid[j], ffn)])
            assert torch.allclose(torch.stack([weights["resid"][l][j], weights["ffn"][l][j]]), prox / prox.sum())


def test_the_graph_keeps_the_edges_above_tau_that_reach_the_prediction(toy):
    full = ci.flow(toy, PROMPT, tau=0.0)
    pruned = ci.flow(toy, PROMPT, tau=0.1)
    assert all(e.weight >= 0.1 for e in pruned.edges) and len(pruned.edges) < len(full.edges)
    top = (2 * toy.cfg.n_layers, pruned.position)
    reached = {top}
    for e in pruned.edges:  # edges come top down: each one's receiving state is already reached
        src_row, dst_row = e.rows
        assert (dst_row, e.dst) in reached
        reached.add((src_row, e.src))
    assert reached == pruned.nodes()
    kinds = {e.kind for e in pruned.edges}
    assert kinds == {"attn", "ffn", "resid"}
    attn = [e for e in pruned.edges if e.kind == "attn"]
    assert all(e.heads and abs(sum(s for _, s in e.heads) - 1) < 1e-3 for e in attn)  # (shares of the heads)
    assert len(pruned.tokens) == 15 and pruned.position == 14
    assert pruned.to_dict()["edges"][0]["rows"] == list(pruned.edges[0].rows)


def test_bad_input_is_refused(toy):
    with pytest.raises(cf.ConfigError, match="tau"):
        ci.flow(toy, PROMPT, tau=2)
    with pytest.raises(cf.ConfigError, match="outside the prompt"):
        ci.flow(toy, PROMPT, position=40)
    with pytest.raises(cf.ConfigError, match="sequential pre-norm"):
        ci.flow(cf.from_hf(tiny_hf("gpt_neox")), "ids:5,6,7")


def test_the_figure_and_the_command_line(toy, tmp_path, capsys):
    from circuitfind.cli import main
    from circuitfind.report.figures import token_flow
    written = token_flow(ci.flow(toy, PROMPT), tmp_path / "flow")
    assert all(p.exists() for p in written)
    assert main(["inspect", "flow", "--model", "toy-lm", "--prompt", PROMPT, "--tokens", "--threshold", "0.1",
                 "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "TokenFlow(15 tokens" in out and (tmp_path / "cli.png").exists()


def _prune_stored(flow: dict, tau: float) -> list[dict]:
    """The page's pruning of the stored graph (its JavaScript, here in Python): top-down, weight ≥ τ into a kept state."""
    kept, edges = {(2 * flow["n_layers"], flow["position"])}, []
    for e in sorted(flow["edges"], key=lambda e: -e["rows"][1]):
        if e["weight"] >= tau and (e["rows"][1], e["dst"]) in kept:
            edges.append(e)
            kept.add((e["rows"][0], e["src"]))
    return edges


def test_the_report_holds_the_graph_at_a_floor_from_which_every_higher_tau_is_exact(toy, tmp_path):
    import json
    run = cf.discover(toy, "ioi", "eap", n=8, edges=40, out=tmp_path / "r", quiet=True)
    stored = json.loads((tmp_path / "r" / "inspect.json").read_text())["token_flow"]
    batch = cf.load_task("ioi", n=8).with_split("test", n=2).batch(toy)
    prompt = batch.clean.tokens[0, : int(batch.clean.attention_mask[0].sum())]
    for tau in (0.04, 0.1, 0.3):
        direct = ci.flow(toy, prompt, tau=tau, position=stored["position"])
        assert len(_prune_stored(stored, tau)) == len(direct.edges), tau
    assert all(f"{r},{t}" in stored["lens"] for r, t in ci.flow(toy, prompt, tau=0.01, position=stored["position"]).nodes())
    assert 'id="token-flow"' in (tmp_path / "r" / "report.html").read_text()
