"""The token-by-layer flow graph's cost (#32): `inspect.flow` on one 64-token prompt at GPT-2 small's shape (random
weights, fp32, CPU) against a plain forward of the same prompt, in turns (medians of 7). Target: ≤ 3x."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import gpt2_small_random, timeit_alternating  # noqa: E402

import circuitfind as cf  # noqa: E402
from circuitfind import inspect as ci  # noqa: E402


def main():
    model = cf.from_hf(gpt2_small_random())
    tokens = torch.randint(0, 50257, (1, 64), generator=torch.Generator().manual_seed(0))

    def forward():
        with torch.no_grad():
            model(tokens)
    t_forward, t_flow = timeit_alternating(forward, lambda: ci.flow(model, tokens, tau=0.04), repeat=7)
    graph = ci.flow(model, tokens, tau=0.04)
    print(f"GPT-2-small-shaped random model, 64 tokens, {torch.get_num_threads()} threads: forward "
          f"{1e3 * t_forward:.1f} ms, token flow {1e3 * t_flow:.1f} ms ({t_flow / t_forward:.2f}x); {graph}")


if __name__ == "__main__":
    main()
