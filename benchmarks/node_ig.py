"""eap-ig-activations (`engine/node_ig.py`): what the per-node estimator costs, in forward-equivalents, beside the
(1 + 2L)·n forward+backward passes of the EAP-IG library and MIB, which run it pass by pass.

GPT-2-small-shaped random model (12 layers), 8 prompts × 64 tokens, corrupted prompts different everywhere (no
shared prefix to skip), steps n = 5. A forward-equivalent (FE) is the time of one plain forward of the batch
(no gradients, logits at the answer positions). Printed:
- F: the plain forward; P: one full pass as the library runs each of its passes (a forward with gradients, the
  backward, every receiver's gradient scored against every sender's difference): `attribute` at alpha = 1;
- the estimator's time T and T/F;
- the library's (1 + 2L)·n passes, in FE counted two ways: 3 FE a pass (the usual backward = 2 forwards) and
  priced at this engine's own pass (P/F a pass); and the ratio of T to each.
- layer-passes: how many layers, forward and backward, each computes (the library: every layer in every pass).

`--flops` counts instead of timing (torch's FlopCounterMode: matrix products and attention, not the elementwise
ops), the same figures in FLOPs, which a busy machine does not move; `--batch B` sets the prompts (default 8).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import gpt2_small_random, timeit  # noqa: E402

import circuitfind as cf  # noqa: E402
from circuitfind.engine.ablation import ablated_outputs  # noqa: E402
from circuitfind.engine.attribution import attribute  # noqa: E402
from circuitfind.engine.node_ig import node_integrated_gradients  # noqa: E402
from circuitfind.engine.patching import Inputs  # noqa: E402

STEPS, BATCH, POS = 5, 8, 64


def layer_passes(L: int, n: int, parallel: bool = False) -> tuple[float, float]:
    """Layers computed (forward, and again backward) by the library's passes and by the estimator's suffix
    runs (attention counted 1/3 of a layer, the MLP 2/3, roughly GPT-2 small's FLOPs at 64 tokens), plus the
    estimator's clean forward and its two backwards over it."""
    library = (1 + 2 * L) * n * L
    suffix = L + sum((L - l - 1) + (0 if parallel else 2 / 3) for l in range(L)) + sum(L - l - 1 for l in range(L))
    return library, (n - 1) * suffix + 1 * L + 2 * L


def main():
    batch = int(sys.argv[sys.argv.index("--batch") + 1]) if "--batch" in sys.argv else BATCH
    model = cf.from_hf(gpt2_small_random())
    L = model.cfg.n_layers
    g = torch.Generator().manual_seed(0)
    clean = Inputs.of(torch.randint(0, 50257, (batch, POS), generator=g))
    corrupt = Inputs.of(torch.randint(0, 50257, (batch, POS), generator=g))
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    right, wrong = clean.tokens[:, -1], corrupt.tokens[:, -1]

    def objective(logits):
        rows = torch.arange(logits.shape[0])
        return (logits[rows, right] - logits[rows, wrong]).mean()

    def forward():
        with torch.no_grad():
            model(clean.tokens, clean.attention_mask, at=clean.answer_pos)

    if "--flops" in sys.argv:
        return count_flops(model, clean, abl, objective, forward, batch)
    F = timeit(forward, repeat=5, warmup=1)
    P = timeit(lambda: attribute(model, clean, abl, objective), repeat=3, warmup=1)
    print(f"(F {F:.3f} s, P {P:.3f} s measured; the estimator next)", flush=True)
    t0 = time.perf_counter()
    scores = node_integrated_gradients(model, clean, abl, objective, steps=STEPS)
    T = time.perf_counter() - t0
    assert torch.isfinite(scores).all() and scores.abs().max() > 0
    passes = (1 + 2 * L) * STEPS
    lib_conv, lib_priced = 3 * passes, passes * P / F
    lib_layers, ours_layers = layer_passes(L, STEPS)
    print(f"GPT-2-small-shaped random model, {batch} x {POS} tokens, steps {STEPS}, {torch.get_num_threads()} threads")
    print(f"plain forward F = {F:.3f} s; one library-style pass P (forward + backward + scoring) = {P:.3f} s "
          f"= {P / F:.2f} FE")
    print(f"eap-ig-activations: {T:.1f} s = {T / F:.1f} FE")
    print(f"library: (1 + 2L)·n = {passes} passes = {lib_conv} FE at 3 FE a pass (ours {T / F / lib_conv:.3f} of it), "
          f"{lib_priced:.1f} FE at this engine's pass (ours {T / F / lib_priced:.3f} of it, about "
          f"{passes * P:.0f} s)")
    print(f"layer-passes (forward and backward): library {lib_layers:.0f}, ours {ours_layers:.1f} "
          f"({ours_layers / lib_layers:.3f})")


def count_flops(model, clean, abl, objective, forward, batch):
    from torch.utils.flop_counter import FlopCounterMode

    def flops(fn):
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()
    F = flops(forward)
    P = flops(lambda: attribute(model, clean, abl, objective))
    T = flops(lambda: node_integrated_gradients(model, clean, abl, objective, steps=STEPS))
    L = model.cfg.n_layers
    passes = (1 + 2 * L) * STEPS
    print(f"GPT-2-small-shaped random model, {batch} x {POS} tokens, steps {STEPS}: FLOPs of matrix products and "
          f"attention (FlopCounterMode)")
    print(f"plain forward F = {F / 1e9:.2f} GFLOP; one library-style pass P = {P / 1e9:.2f} GFLOP = {P / F:.2f} FE")
    print(f"eap-ig-activations: {T / 1e9:.1f} GFLOP = {T / F:.1f} FE")
    print(f"library: {passes} passes = {3 * passes} FE at 3 FE a pass (ours {T / F / (3 * passes):.3f} of it), "
          f"{passes * P / F:.1f} FE at this engine's pass (ours {T / (passes * P):.3f} of it)")


if __name__ == "__main__":
    main()
