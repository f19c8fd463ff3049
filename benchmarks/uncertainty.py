"""What error bars cost (issue 31). Ratios measured in this one run, on the GPT-2-small-shaped random model
(12 layers, 12 heads, d_model 768, vocab 50257), fp32, CPU, 64 examples of PROMPT tokens, 1000 resamples.

- EAP and EAP-IG (5 steps) with intervals vs the point estimate: `score_edges(per_example=True)` (the same
  passes, each example's products kept) then `edge_intervals` (every edge's interval and its frequency in a
  resample's top-k, k = 1% of the edges), against `score_edges` alone, in turns. Targets: ≤ 1.2x the time,
  ≤ 1.3x the peak memory (each role's peak in a fresh process).
- The faithfulness curve (MIB's 10 sizes, both rankings) with intervals of every point, CPR and CMD
  (`resamples=1000`) vs the curve alone, in turns. Target ≤ 1.1x.
Beside the seconds, figures this machine's speed does not move: the forwards and backwards are the same
(per_example changes no pass), so what the intervals add is the bootstrap's products, printed in FLOPs
against the passes' own (2 · parameters · tokens a forward, 3x that with its backward), and the bytes of the
per-example scores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import gpt2_small_random, peak_memory_in_process, report_peak, timeit, timeit_alternating  # noqa: E402

import circuitfind as cf  # noqa: E402
from circuitfind.task import Example, Task  # noqa: E402
from circuitfind.uncertainty import edge_intervals  # noqa: E402

N, PROMPT, RESAMPLES = 64, 16, 1000


class RandomPairs(Task):
    """Random clean/corrupted token prompts; the answer is the clean prompt's first token."""
    name = "random-pairs"
    metric = "logit-diff"

    def example(self, rng, words):
        a, b = words.random_tokens(rng, PROMPT), words.random_tokens(rng, PROMPT)
        return Example(clean=a, corrupt=b, correct=a[0], wrong=b[0])


def setup():
    model = cf.from_hf(gpt2_small_random())
    task = RandomPairs(n=N)
    return model, task, max(1, model.graph.n_edges // 100)


def point(model, task, method, k):
    return cf.score_edges(model, task, method, **({"steps": 5} if method == "eap-ig" else {}))


def with_intervals(model, task, method, k):
    scores = cf.score_edges(model, task, method, per_example=True, **({"steps": 5} if method == "eap-ig" else {}))
    scores.intervals = edge_intervals(scores, RESAMPLES, seed=0, k=k)
    return scores


def roles(model, task, k, curve: bool = True):
    """Each measured call by name; curve=False: without building the curve's scores (a peak measured in a
    fresh process must not follow an EAP run of the set-up, whose peak ru_maxrss would keep)."""
    scores = cf.score_edges(model, task, "eap") if curve else None
    test = task.with_split("test")
    return {"eap": lambda: point(model, task, "eap", k), "eap-ci": lambda: with_intervals(model, task, "eap", k),
            "eap-ig": lambda: point(model, task, "eap-ig", k),
            "eap-ig-ci": lambda: with_intervals(model, task, "eap-ig", k),
            "curve": lambda: cf.faithfulness_curve(model, test, scores),
            "curve-ci": lambda: cf.faithfulness_curve(model, test, scores, resamples=RESAMPLES)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--peak", help="(internal) run one role in this process and print its peak memory")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each side (in turns)")
    parser.add_argument("-n", type=int, default=N, help="examples (the issue's figure: 64)")
    args = parser.parse_args()
    globals()["N"] = args.n
    model, task, k = setup()
    run = roles(model, task, k, curve=not args.peak or args.peak.startswith("curve"))
    if args.peak:
        report_peak(run[args.peak])
        return
    g = model.graph
    params = sum(p.numel() for p in model.parameters())
    tokens = N * PROMPT
    forward = 2 * params * tokens  # FLOPs of one forward over the task's tokens (matrix products)
    boot = 2 * 2 * RESAMPLES * N * g.n_edges  # every edge's resampled means, for its interval and for the top-k
    kept_bytes = 4 * N * g.n_receivers * g.n_senders
    print(f"GPT-2-small shape ({params / 1e6:.0f}M parameters), {N} examples × {PROMPT} tokens, {RESAMPLES} "
          f"resamples, top-k frequency at k = {k} edges; per-example scores: {kept_bytes / 1e6:.1f} MB")
    print(f"bootstrap products {boot / 1e9:.2f} GFLOP = {boot / forward:.3f} forwards "
          f"(EAP: 2 forwards + 1 backward ≈ 4 forwards; EAP-IG 5 steps ≈ 17)")
    kept = cf.score_edges(model, task, "eap", per_example=True)
    t_boot = timeit(lambda: edge_intervals(kept, RESAMPLES, seed=0, k=k), repeat=3, warmup=1)
    print(f"edge_intervals alone (the bootstrap of every edge's score and top-k frequency): {t_boot:.2f} s")
    for method in ("eap", "eap-ig"):
        t_point, t_ci = timeit_alternating(run[method], run[method + "-ci"], repeat=args.repeat)
        m_point = peak_memory_in_process(__file__, method, ["-n", str(N)])
        m_ci = peak_memory_in_process(__file__, method + "-ci", ["-n", str(N)])
        print(f"{method}: point {t_point:.2f} s, with intervals {t_ci:.2f} s: {t_ci / t_point:.3f}x "
              f"(target ≤ 1.2); peak memory {m_point / 2**20:.0f} MiB → {m_ci / 2**20:.0f} MiB: "
              f"{m_ci / m_point:.3f}x (target ≤ 1.3)")
    t_curve, t_curve_ci = timeit_alternating(run["curve"], run["curve-ci"], repeat=args.repeat)
    print(f"faithfulness curve: alone {t_curve:.2f} s, with intervals {t_curve_ci:.2f} s: "
          f"{t_curve_ci / t_curve:.3f}x (target ≤ 1.1)")


if __name__ == "__main__":
    main()
