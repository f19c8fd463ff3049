"""Edge Pruning speed (issue: learned masks): time per optimisation step vs one plain forward +
backward of the model, on the GPT-2-small-shaped random model (12 layers, 12 heads, d_model 768,
vocab 50257; 32,491 edges), batch 8 × 64 tokens, fp32, CPU. Target: ratio ≤ 3x.

A step = sample the gates, masked forward, KL, backward to the 32,491 mask logits, Adam. The
per-step time is the difference between runs of 8 and 3 steps, divided by 5, so the one-off setup
(clean run, ablated outputs) is not counted. The plain step is the canonical model's forward and a
backward to all of its parameters (what fine-tuning costs).

Then, at equal edge counts, the faithfulness of Edge Pruning's circuit and of EAP-IG's top edges on
toy tasks (test split).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import gpt2_small_random, timeit  # noqa: E402
from methods import RandomPairs  # noqa: E402

import circuitfind as cf  # noqa: E402


def main():
    model = cf.from_hf(gpt2_small_random())
    task = RandomPairs(n=8)
    batch = task.batch(model)

    def plain_step():
        model.requires_grad_(True)
        logits = model(batch.clean.tokens)[torch.arange(8), batch.clean.answer_pos]
        logits.logsumexp(-1).mean().backward()
        model.zero_grad(set_to_none=True)
        model.requires_grad_(False)

    t_plain = timeit(plain_step, repeat=3, warmup=1)
    t3 = timeit(lambda: cf.score_edges(model, task, "edge-pruning", steps=3), repeat=2, warmup=1)
    t8 = timeit(lambda: cf.score_edges(model, task, "edge-pruning", steps=8), repeat=2, warmup=0)
    step = (t8 - t3) / 5
    print(f"plain forward+backward {t_plain * 1e3:.0f} ms; edge-pruning step {step * 1e3:.0f} ms: "
          f"{step / t_plain:.2f}x (target ≤ 3)")


def faithfulness_vs_eap_ig():
    """At the same edge count, Edge Pruning's circuit vs EAP-IG's top edges (test split)."""
    for model_name, task_name, k, steps in (("toy-induction", "induction", 6, 300), ("toy-lm", "ioi", 48, 400),
                                            ("toy-lm", "greater-than", 48, 400)):
        model = cf.load_model(model_name)
        task = cf.load_task(task_name, n=60)
        ep = cf.score_edges(model, task, "edge-pruning", sparsity=1 - k / model.graph.n_edges, steps=steps)
        ig = cf.score_edges(model, task, "eap-ig")
        f = {m: cf.evaluate(model, task, cf.prune(s, edges=k))["faithfulness"] for m, s in (("edge-pruning", ep),
                                                                                              ("eap-ig", ig))}
        print(f"{model_name} {task_name}, {k} of {model.graph.n_edges} edges: faithfulness edge-pruning "
              f"{f['edge-pruning']:.3f}, eap-ig {f['eap-ig']:.3f}")


if __name__ == "__main__":
    main()
    faithfulness_vs_eap_ig()
