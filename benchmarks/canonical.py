"""Canonical forward vs the Hugging Face forward (issue: foundation).

GPT-2-small-sized random model, batch 8 × 64 tokens, fp32, CPU. Prints time and peak-memory
ratios measured in this one run (times in turns, medians of 7; peak memory the median of 3 fresh
processes per side, as in engine.py). Targets: time ≤ 1.15x, peak memory ≤ 1.2x.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import gpt2_small_random, peak_memory_in_process, report_peak, timeit_alternating  # noqa: E402

import circuitfind as cf  # noqa: E402


def main():
    torch.set_grad_enabled(False)
    hf = gpt2_small_random()
    model = cf.from_hf(hf)
    tokens = torch.randint(0, 50257, (8, 64))
    mask = torch.ones_like(tokens)
    run_hf = lambda: hf(input_ids=tokens, attention_mask=mask).logits  # noqa: E731
    run_cf = lambda: model(tokens, mask)  # noqa: E731
    if "--peak" in sys.argv:  # the child side of a memory measurement
        return report_peak({"hf": run_hf, "cf": run_cf}[sys.argv[sys.argv.index("--peak") + 1]])
    m_hf, m_cf = (statistics.median(peak_memory_in_process(__file__, r) for _ in range(3)) for r in ("hf", "cf"))
    diff = (run_hf() - run_cf()).abs().max().item()
    t_hf, t_cf = timeit_alternating(run_hf, run_cf, repeat=7)
    print(f"threads={torch.get_num_threads()} max|Δlogits|={diff:.2e}")
    print(f"HF forward        {t_hf * 1e3:8.1f} ms   peak +{m_hf / 2**20:7.1f} MiB")
    print(f"canonical forward {t_cf * 1e3:8.1f} ms   peak +{m_cf / 2**20:7.1f} MiB")
    print(f"ratio time {t_cf / t_hf:.3f}x (target ≤ 1.15)   ratio memory {m_cf / m_hf:.3f}x (target ≤ 1.2)")


if __name__ == "__main__":
    main()
