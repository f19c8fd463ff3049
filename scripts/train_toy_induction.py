"""Train `toy-induction`: a 2-layer, one-head-per-layer, attention-only model on repeated random tokens.

    python scripts/train_toy_induction.py        # writes circuitfind/zoo_models/toy-induction/ (~1 min, 2 cores)

Llama format (rotary positions: relative attention makes a previous-token head easy to learn), MLPs
zero and frozen. Sequences R A A: a random prefix R of 0-8 tokens (so the copy's offset cannot be read
off positions — without it the model learns a positional shortcut) and a random A of 4-10 tokens
from a vocabulary of 64; the loss is on the second copy. Seeded. The ground truth is read off the
trained model: the script measures each head's attention to the previous position (layer 0) and to
the token after the previous occurrence (layer 1) and records the circuit
input → a0.h0<v> → (K-composition) → a1.h0<k>, input → a1.h0<q>, input → a1.h0<v>, a1.h0 → logits.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import transformers

VOCAB, D_MODEL, L_MIN, L_MAX, MAX_PREFIX, STEPS, LR = 64, 64, 4, 10, 8, 8000, 3e-3
OUT = Path(__file__).resolve().parent.parent / "circuitfind" / "zoo_models" / "toy-induction"


def batch(gen: torch.Generator, size: int, length: int, prefix: int) -> torch.Tensor:
    """[size, P + 2L] sequences R A A."""
    r = torch.randint(0, VOCAB, (size, prefix), generator=gen)
    a = torch.randint(0, VOCAB, (size, length), generator=gen)
    return torch.cat([r, a, a], dim=1)


def build() -> transformers.LlamaForCausalLM:
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=D_MODEL, intermediate_size=4, num_hidden_layers=2,
                                      num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=32,
                                      bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config)
    for layer in model.model.layers:  # attention-only: the MLPs write nothing
        for p in layer.mlp.parameters():
            p.data.zero_()
            p.requires_grad_(False)
    return model


def train(seed: int = 0) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    for step in range(STEPS):
        L = int(torch.randint(L_MIN, L_MAX + 1, (1,), generator=gen))
        x = batch(gen, 64, L, int(torch.randint(0, MAX_PREFIX + 1, (1,), generator=gen)))
        start = x.shape[1] - L  # first token of the second copy
        logits = model(x[:, :-1]).logits[:, start - 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), x[:, start:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 2000 == 0:
            print(f"step {step}: loss {loss.item():.3f}")
    return model.eval()


def measure(model) -> dict:
    """Accuracy on the induction task's prompts (A A[:-1] → A[-1], |A| = 8) and the heads' attention."""
    L = 8
    x = batch(torch.Generator().manual_seed(123), 512, L, 0)
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        out = model(x[:, :-1], output_attentions=True)
    q = torch.arange(L, 2 * L - 1)
    return {"accuracy_last_position": (out.logits[:, -1].argmax(-1) == x[:, -1]).float().mean().item(),
            "attention_to_previous_position_a0.h0": out.attentions[0][:, 0, q, q - 1].mean().item(),
            "attention_to_induction_target_a1.h0": out.attentions[1][:, 0, q, q - L + 1].mean().item()}


def main():
    start = time.time()
    model = train()
    figures = measure(model)
    OUT.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(OUT, safe_serialization=True)
    edges = ["input->a0.h0<v>", "a0.h0->a1.h0<k>", "input->a1.h0<q>", "input->a1.h0<v>", "a1.h0->logits"]
    meta = {"task": "induction", "edges": edges, **figures, "seconds": round(time.time() - start, 1),
            "script": "scripts/train_toy_induction.py"}
    (OUT / "ground_truth.json").write_text(json.dumps(meta, indent=2))
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
