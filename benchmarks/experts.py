"""The expert-level graph of a mixture of experts against its node graph (#30).

One random Mixtral-shaped model at a quarter of GPT-2 small's width (6 layers, 8 heads, d_model 256, 8
experts of width 256, top 2), 8 prompts × 32 tokens, fp32, CPU. For the node graph (`m{l}` one node) and
the expert-level graph (`load_model(..., experts=True)`: each expert a sender, its input and router input
receivers) it prints the edge count and the time of EAP (the clean pass with receiver gradients) and of a
batch of 16 random-mask forwards, as ratios measured in turns in this one run (medians of 5).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).parent))
from common import timeit_alternating  # noqa: E402

import circuitfind as cf  # noqa: E402
from circuitfind.engine.ablation import ablated_outputs  # noqa: E402
from circuitfind.engine.attribution import attribute  # noqa: E402
from circuitfind.engine.patching import Inputs, masked_forward  # noqa: E402


def main():
    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=8,
                                     hidden_size=256, intermediate_size=256, num_local_experts=8,
                                     num_experts_per_tok=2, vocab_size=8192, max_position_embeddings=256)
    hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    node, expert = cf.from_hf(hf), cf.from_hf(hf, experts=True)
    gen = torch.Generator().manual_seed(0)
    clean = Inputs.of(torch.randint(3, 8192, (8, 32), generator=gen))
    corrupt = Inputs.of(torch.randint(3, 8192, (8, 32), generator=gen))
    objective = lambda logits: logits[..., 5].mean() - logits[..., 7].mean()  # noqa: E731
    runs = {}
    for name, model in (("node", node), ("expert", expert)):
        abl = ablated_outputs(model, "corrupted", clean, corrupt)
        g = model.graph
        masks = (torch.rand(16, g.n_receivers, g.n_senders, generator=gen) < 0.5).float() * g.edge_mask
        runs[name] = (lambda m=model, a=abl: attribute(m, clean, a, objective),
                      lambda m=model, a=abl, k=masks: masked_forward(m, clean, a, k))
        print(f"{name:>6} graph: {g.n_senders} senders, {g.n_receivers} receivers, {g.n_edges:,} edges")
    for i, what in enumerate(("EAP (1 forward + 1 backward)", "16 random-mask forwards")):
        with torch.no_grad() if i else torch.enable_grad():
            t_node, t_expert = timeit_alternating(runs["node"][i], runs["expert"][i], repeat=5)
        print(f"{what}: node {t_node * 1e3:.0f} ms, expert-level {t_expert * 1e3:.0f} ms "
              f"({t_expert / t_node:.2f}x), threads={torch.get_num_threads()}")


if __name__ == "__main__":
    main()
