"""Engine speed and memory (issue: numerical core). Ratios measured in this one run.

GPT-2-small-sized random model (12 layers, 12 heads, d_model 768, vocab 50257), batch 8 × 64
tokens, fp32, CPU. "Plain forward" is the canonical model's forward with logits at every position
(it runs at 0.91x the Hugging Face forward, see benchmarks/canonical.py).

Targets: dense random mask ≤ 2.0x a plain forward; circuit keeping 10% of nodes ≤ 0.6x;
EAP ≤ 1.3x time and ≤ 1.5x peak memory of (2 plain forwards + 1 backward); exact patching of
every edge ≤ 0.5x one plain forward per edge (sampled receivers, extrapolated to all edges).
Peak memory is measured in a fresh process per role (the resident memory one call adds).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    gpt2_small_random,
    peak_memory_in_process,
    report_peak,
    timeit,
    timeit_alternating,
)

import circuitfind as cf  # noqa: E402
from circuitfind.engine.ablation import ablated_outputs  # noqa: E402
from circuitfind.engine.attribution import attribute  # noqa: E402
from circuitfind.engine.patching import Inputs, masked_forward  # noqa: E402
from circuitfind.engine.walk import Walk  # noqa: E402


def setup(batch=8, pos=64):
    model = cf.from_hf(gpt2_small_random())
    g = torch.Generator().manual_seed(0)
    clean = Inputs.of(torch.randint(0, 50257, (batch, pos), generator=g))
    corrupt = Inputs.of(torch.randint(0, 50257, (batch, pos), generator=g))
    return model, clean, corrupt


def objective(logits):  # [..., batch, vocab] → [...]
    return (logits[..., 11] - logits[..., 13]).mean(-1)


def plain_forward_backward(model, clean, corrupt):
    """The baseline of attribution: a corrupted forward, then a clean forward and its backward."""
    with torch.no_grad():
        model(corrupt.tokens)

    def leaf(x, name):
        return x.detach().requires_grad_(True)

    with torch.enable_grad(), model.hooks({"hook_embed": leaf}):
        logits = model(clean.tokens)
        objective(logits[torch.arange(clean.batch), clean.answer_pos]).backward()


def exact_per_edge(model, clean, abl, t_plain, per_receiver=8):
    """Time exact patching of `per_receiver` edges into one query receiver and the MLP of every layer
    (and logits), then extrapolate the per-edge time of each receiver kind to all edges of the graph.
    Keys and values cost what queries cost: one head varies per patched edge in each case."""
    g = model.graph
    t0 = time.perf_counter()
    walk = Walk(model, clean, abl, None, record=True)
    full = g.edge_mask.float()
    per_edge, sampled = {}, 0
    for layer in range(g.n_layers + 1):
        walk.run(stop=layer) if layer < g.n_layers else None
        receivers = [g.logits_receiver] if layer == g.n_layers else [g.qkv_receiver(layer, "q", 0), g.mlp_receiver(layer)]
        for dst in receivers:
            srcs = g.edge_mask[dst].nonzero()[:, 0][-per_receiver:]
            t1 = time.perf_counter()
            masks = full.expand(len(srcs), -1, -1).clone()
            masks[torch.arange(len(srcs)), dst, srcs] = 0
            objective(walk.branch(masks).run())
            per_edge[dst] = (time.perf_counter() - t1) / len(srcs)
            sampled += len(srcs)
    shared = time.perf_counter() - t0 - sum(per_edge[d] * min(per_receiver, int(g.edge_mask[d].sum())) for d in per_edge)
    total = shared
    for dst in range(g.n_receivers):
        layer = int(g.receiver_layer[dst])
        kind = g.logits_receiver if layer == g.n_layers else (g.mlp_receiver(layer) if dst == g.mlp_receiver(layer) else g.qkv_receiver(layer, "q", 0))
        total += per_edge[kind] * int(g.edge_mask[dst].sum())
    return total / g.n_edges / t_plain, sampled


def roles(model, clean, corrupt):
    """What is timed and measured: EAP as `cf.score_edges` runs it, and its baseline."""
    def eap():
        a = ablated_outputs(model, "corrupted", clean, corrupt)  # the corrupted forward is part of EAP
        return attribute(model, clean, a, objective, consume=True)  # as methods/eap.py calls it

    def eap_ig():  # no target: printed so the memory of the default method is on record
        a = ablated_outputs(model, "corrupted", clean, corrupt)
        return attribute(model, clean, a, objective, alphas=[0.2, 0.4, 0.6, 0.8, 1.0], consume=True)

    def base():
        plain_forward_backward(model, clean, corrupt)
    return {"eap": eap, "eap-ig": eap_ig, "base": base}


def main():
    torch.set_grad_enabled(False)
    model, clean, corrupt = setup()
    if "--peak" in sys.argv:  # the child side of a memory measurement
        return report_peak(roles(model, clean, corrupt)[sys.argv[sys.argv.index("--peak") + 1]])
    g = model.graph
    run = roles(model, clean, corrupt)
    eap, base = run["eap"], run["base"]
    # each figure the median of 3 fresh processes: on this VM the same call's peak varies by ~100 MiB
    m_base, m_eap, m_ig = (statistics.median(peak_memory_in_process(__file__, r) for _ in range(3))
                           for r in ("base", "eap", "eap-ig"))
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    plain = lambda: model(clean.tokens)  # noqa: E731

    dense = torch.rand(g.n_receivers, g.n_senders, generator=torch.Generator().manual_seed(1))
    t_plain, t_dense = timeit_alternating(plain, lambda: masked_forward(model, clean, abl, dense), repeat=7)
    print(f"threads={torch.get_num_threads()}  plain forward {t_plain * 1e3:.0f} ms")
    print(f"masked forward, dense random mask: {t_dense * 1e3:.0f} ms = {t_dense / t_plain:.2f}x plain (target ≤ 2.0)")

    nodes = torch.zeros(g.n_senders, dtype=torch.bool)
    nodes[torch.randperm(g.n_senders, generator=torch.Generator().manual_seed(2))[: g.n_senders // 10]] = True
    sparse = g.nodes_to_edges(nodes).float()
    t_plain_2, t_sparse = timeit_alternating(plain, lambda: masked_forward(model, clean, abl, sparse), repeat=7)
    print(f"masked forward, 10% of nodes:      {t_sparse * 1e3:.0f} ms = {t_sparse / t_plain_2:.2f}x plain (target ≤ 0.6)")

    t_base, t_eap = timeit_alternating(base, eap, repeat=7)
    print(f"EAP, all {g.n_edges} edges: {t_eap * 1e3:.0f} ms = {t_eap / t_base:.2f}x (2 forwards + 1 backward = "
          f"{t_base * 1e3:.0f} ms; target ≤ 1.3);  peak memory {m_eap / 2**20:.0f} MiB = {m_eap / m_base:.2f}x "
          f"({m_base / 2**20:.0f} MiB; target ≤ 1.5)")

    print(f"EAP-IG (5 steps, inputs): peak memory {m_ig / 2**20:.0f} MiB = {m_ig / m_base:.2f}x the same baseline (no target)")

    ratio, sampled = exact_per_edge(model, clean, abl, timeit(plain, repeat=5))
    print(f"exact patching: {ratio:.3f}x one plain forward per edge (target ≤ 0.5), measured on {sampled} edges "
          f"of one q/k/v/MLP receiver per layer + logits, extrapolated to all {g.n_edges} edges")


if __name__ == "__main__":
    main()
