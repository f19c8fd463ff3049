"""What `batch_size=` buys: peak memory and time of scoring a task whole against a batch of examples at a
time, on the GPT-2-small-shaped random model (random token prompts, 48 examples × 64 tokens, fp32, CPU).

Held whole, the ablated outputs of every sender ([src, batch, pos, d_model]: 157 × 48 × 64 × 768 floats,
1.4 GiB) and the sender differences dominate; a batch of 8 holds a sixth of them. Each peak is the median
of 3 fresh processes; times are medians of the two sides run in turns. Run from the repository root:

    python benchmarks/batching.py
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import gpt2_small_random, peak_memory_in_process, report_peak, timeit_alternating  # noqa: E402
from methods import RandomPairs  # noqa: E402

import circuitfind as cf  # noqa: E402

N, BATCH = 48, 8


def roles(model, task):
    return {f"{method} {'whole' if b is None else f'batch {b}'}":
            (lambda method=method, b=b: cf.score_edges(model, task, method, batch_size=b, steps=2)
             if method == "eap-ig" else cf.score_edges(model, task, method, batch_size=b))
            for method in ("eap", "eap-ig") for b in (None, BATCH)}


def main():
    torch.set_grad_enabled(False)
    model = cf.from_hf(gpt2_small_random())
    task = RandomPairs(n=N)
    run = roles(model, task)
    if "--peak" in sys.argv:  # the child side of a memory measurement
        return report_peak(run[sys.argv[sys.argv.index("--peak") + 1]])
    # every peak first, from fresh processes, before this one runs anything
    peaks = {r: statistics.median(peak_memory_in_process(__file__, r) for _ in range(3)) for r in run}
    for method in ("eap", "eap-ig"):
        whole, batched = f"{method} whole", f"{method} batch {BATCH}"
        t_whole, t_batched = timeit_alternating(run[whole], run[batched], repeat=3)
        same = torch.allclose(run[whole]().scores, run[batched]().scores, rtol=1e-4, atol=1e-6)
        label = method + (" (2 steps)" if method == "eap-ig" else "")
        print(f"{label}, {N} examples: whole {peaks[whole] / 2**20:.0f} MiB, {t_whole:.2f} s; batch_size={BATCH} "
              f"{peaks[batched] / 2**20:.0f} MiB, {t_batched:.2f} s ({peaks[batched] / peaks[whole]:.2f}x the memory, "
              f"{t_batched / t_whole:.2f}x the time); same scores: {same}")


if __name__ == "__main__":
    main()
