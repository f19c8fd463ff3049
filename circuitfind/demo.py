"""`make demo`: build a GPT-2-shaped model offline, show its graph, patch edges and score them.

Runs in about a minute on two CPU cores; nothing is downloaded.
"""

from __future__ import annotations

import torch
import transformers

import circuitfind as cf
from circuitfind.engine.ablation import ablated_outputs
from circuitfind.engine.attribution import attribute
from circuitfind.engine.patching import Inputs, masked_forward


def main() -> None:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=4, n_head=8, n_embd=256, vocab_size=1000, bos_token_id=0, eos_token_id=0)
    model = cf.from_hf(transformers.GPT2LMHeadModel(config).eval())
    print(model)
    print(model.graph)
    g = model.graph
    clean = Inputs.of(torch.randint(1, 1000, (16, 12)))
    corrupt = Inputs.of(torch.randint(1, 1000, (16, 12)))
    correct, wrong = clean.tokens[:, -1], corrupt.tokens[:, -1]
    rows = torch.arange(16)

    def objective(logits):  # logit difference, averaged over the batch
        return (logits[..., rows, correct] - logits[..., rows, wrong]).mean(-1)

    ablated = ablated_outputs(model, "corrupted", clean, corrupt)
    scores = attribute(model, clean, ablated, objective)
    top = scores.abs().flatten().topk(5).indices
    print("top edges by |EAP score|:")
    for i in top.tolist():
        dst, src = divmod(i, g.n_senders)
        print(f"  {g.edge_name(dst, src):24s} {scores[dst, src].item():+.4f}")
    keep = torch.zeros(g.n_receivers, g.n_senders)
    keep.view(-1)[scores.abs().flatten().topk(g.n_edges // 10).indices] = 1
    full, empty = objective(masked_forward(model, clean, ablated, g.edge_mask.float())), \
        objective(masked_forward(model, clean, ablated, keep * 0))
    kept = objective(masked_forward(model, clean, ablated, keep))
    print(f"metric: full model {full:.4f}, top 10% of edges {kept:.4f}, no edges {empty:.4f} "
          f"(faithfulness {(kept - empty) / (full - empty):.3f})")


if __name__ == "__main__":
    main()
