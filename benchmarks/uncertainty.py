"""What error bars cost (#31): intervals against the point estimate, in one run.

GPT-2 small's shape (random weights), 64 prompts × 32 tokens, fp32, CPU. For EAP and EAP-IG (5 steps): the
time of the scores alone against the time of the scores kept per example plus the bootstrap of every edge's
interval and in-circuit frequency (1000 resamples, `edge_intervals`), in turns (medians); peak memory of each
(the median of fresh processes, as engine.py measures it). For the faithfulness curve: the curve alone against
the curve with its 1000-resample intervals. Targets: ≤ 1.2x time and ≤ 1.3x memory for the scores, ≤ 1.1x for
the curve. `--repeat N`, `--peak-runs N` change the counts.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import gpt2_small_random, peak_memory_in_process, report_peak, timeit_alternating  # noqa: E402

import circuitfind as cf  # noqa: E402
from circuitfind.task import Example, Task  # noqa: E402
from circuitfind.uncertainty import edge_intervals  # noqa: E402

N, POS, RESAMPLES = 64, 32, 1000


class RandomPairs(Task):
    """Random clean/corrupted token prompts; the answer is the clean prompt's first token."""
    name = "random-pairs"
    metric = "logit-diff"
    test_fraction = 0.5

    def example(self, rng, words):
        a, b = words.random_tokens(rng, POS), words.random_tokens(rng, POS)
        return Example(clean=a, corrupt=b, correct=a[0], wrong=b[0])


def roles(model, task):
    """name → a call: (method, with intervals or not) and the curve (alone or with intervals)."""
    k = model.graph.n_edges // 20

    def scored(method, ci, **options):
        def run():
            s = cf.score_edges(model, task, method, per_example=ci, **options)
            if ci:
                s.intervals = edge_intervals(s, RESAMPLES, k=k)
            return s
        return run
    scores = cf.score_edges(model, task, "eap")
    return {"eap": scored("eap", False), "eap+ci": scored("eap", True),
            "eap-ig": scored("eap-ig", False, steps=5), "eap-ig+ci": scored("eap-ig", True, steps=5),
            "curve": lambda: cf.faithfulness_curve(model, task, scores),
            "curve+ci": lambda: cf.faithfulness_curve(model, task, scores, resamples=RESAMPLES)}


def main():
    model = cf.from_hf(gpt2_small_random())
    task = RandomPairs(n=N)
    calls = roles(model, task)
    if "--peak" in sys.argv:  # the child side of a memory measurement
        return report_peak(calls[sys.argv[sys.argv.index("--peak") + 1]])
    repeat, peak_runs = (int(sys.argv[sys.argv.index(f) + 1]) if f in sys.argv else d
                         for f, d in (("--repeat", 3), ("--peak-runs", 3)))
    print(f"GPT-2-small-shaped random model, {N} prompts x {POS} tokens (curve: the {task.with_split('test').n}-prompt "
          f"test split), {RESAMPLES} resamples, {torch.get_num_threads()} threads; times in turns, medians of "
          f"{repeat}; peaks: medians of {peak_runs} processes")
    for base in ("eap", "eap-ig", "curve"):
        t0, t1 = timeit_alternating(calls[base], calls[base + "+ci"], repeat=repeat)
        line = f"{base}: {t0:.2f} s, with intervals {t1:.2f} s ({t1 / t0:.2f}x)"
        if base != "curve":
            m0, m1 = (statistics.median(peak_memory_in_process(__file__, role) for _ in range(peak_runs))
                      for role in (base, base + "+ci"))
            line += f"; peak {m0 / 2**20:.0f} MiB, with intervals {m1 / 2**20:.0f} MiB ({m1 / m0:.2f}x)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
