"""Method speed (issue: methods). Ratios measured in this one run, on the GPT-2-small-shaped random
model (12 layers, 12 heads, d_model 768, vocab 50257), fp32, CPU.

- ACDC batched vs naive (one full masked forward per tested edge), same threshold, same circuit, on
  the receivers of the top layer and the logits (a full naive sweep of 32,491 edges takes hours);
  batch 4 × 24 tokens, one run each. Target ≥ 2x. And on toy-lm (IOI, 20 prompts, all 479 edges;
  and 2 prompts, where per-forward overhead does dominate), medians of 5 runs in turns: target ≥ 10x.
  Each toy-lm case also prints the tensor ops each sweep dispatches, a count this VM's speed does
  not move (the 2-prompt sweep's time moves by a third from run to run).
- EAP-IG with 5 steps vs EAP (batch 8 × 64), run in turns. Target ≤ 6x.
- a 10-point faithfulness curve in plain-forward equivalents (batch 8 × 64): one ranking's curve
  (`ranking="signed"`, the CPR curve: 9 masked forwards + the clean and ablated runs). Target ≤ 12.
  Both rankings (CPR and CMD, the default call) are printed too. Each curve runs in turns with the
  plain forward it is divided by (that forward's time on this VM varied 375–743 ms within one session).
A plain forward here is the Hugging Face-equivalent full forward (logits at every position).
"""

from __future__ import annotations

import statistics
import sys
import time
from unittest import mock
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import gpt2_small_random, tensor_ops, timeit_alternating  # noqa: E402

import circuitfind as cf  # noqa: E402
import circuitfind.methods.acdc as acdc  # noqa: E402
from circuitfind.task import Example, Task  # noqa: E402


class RandomPairs(Task):
    """Random clean/corrupted token prompts; the answer is the clean prompt's first token."""
    name = "random-pairs"
    metric = "logit-diff"
    length = 64

    def example(self, rng, words):
        a = words.random_tokens(rng, self.length)
        b = words.random_tokens(rng, self.length)
        return Example(clean=a, corrupt=b, correct=a[0], wrong=b[0])


def main():
    torch.set_grad_enabled(False)
    model = cf.from_hf(gpt2_small_random())
    g = model.graph
    task = RandomPairs(n=8)
    tokens = task.batch(model).clean.tokens

    # each ratio from its two sides run in turns (medians): this VM's slow spells then fall on both alike
    t_eap, t_ig = timeit_alternating(lambda: cf.score_edges(model, task, "eap"),
                                     lambda: cf.score_edges(model, task, "eap-ig", steps=5), repeat=3)
    print(f"EAP {t_eap:.2f} s, EAP-IG (5 steps) {t_ig:.2f} s: {t_ig / t_eap:.2f}x (target ≤ 6)")

    scores = cf.score_edges(model, task, "eap")
    test = task.with_split("test")
    t_plain, t_one = timeit_alternating(lambda: model(tokens),
                                        lambda: cf.faithfulness_curve(model, test, scores, ranking="signed"), repeat=5)
    t_plain_b, t_both = timeit_alternating(lambda: model(tokens), lambda: cf.faithfulness_curve(model, test, scores),
                                           repeat=3)
    print(f"faithfulness curve, 10 sizes, one ranking: {t_one:.2f} s = {t_one / t_plain:.1f} plain forwards "
          f"(plain forward {t_plain * 1e3:.0f} ms; target ≤ 12); both rankings: {t_both / t_plain_b:.1f}")

    small = type("Short", (RandomPairs,), {"length": 24})(n=4)
    top = tuple([g.logits_receiver, g.mlp_receiver(11)] + [g.qkv_receiver(11, t, h) for t in "qkv" for h in (0, 1)])
    n = int(g.edge_mask[list(top)].sum())
    for threshold in (0.002, 0.0005):  # thresholds at which edges are kept (batching's harder case)
        acdc_pair(model, small, threshold, f"ACDC on {n} edges (top layer + logits", 2, receivers=top)

    toy = cf.load_model("toy-lm")  # small: per-forward overhead dominates
    for threshold in (0.01, 0.001):
        acdc_pair(toy, cf.load_task("ioi", n=20), threshold, f"ACDC on toy-lm IOI, all {toy.graph.n_edges} edges", 10,
                  ceiling=True, repeat=5)
    # two prompts: a forward costs about the same whatever it holds, so the ratio is one of forward counts
    acdc_pair(toy, cf.load_task("ioi", n=2), 0.01, "ACDC on toy-lm IOI, 2 prompts", 10, ceiling=True, repeat=5)


def acdc_pair(model, task, threshold, label, target, ceiling=False, repeat=1, **options):
    """Time batched and naive ACDC at one threshold (counting their masked forwards) and check they
    keep the same circuit. ceiling: also time the batched sweep told the loop's decisions in advance
    (every prediction right: one mask per tested edge), the most any chunk prediction could gain.
    repeat: rounds of the runs in turns, each run's time the median of its rounds (sub-second sweeps
    vary by a third from run to run on this VM)."""
    times, kept, forwards = {}, {}, {}
    runs = ["batched", "naive"] + (["ceiling"] if ceiling else [])
    cf.score_edges(model, task, "acdc", threshold=threshold, chunk=4, **options)  # warm-up (first calls, pages)
    for _ in range(repeat):
        for run in runs:
            guess = acdc._Guesses.first
            if run == "ceiling":  # removal predicted exactly where the loop removed
                guess = lambda self, dst, src: not bool(kept["naive"].mask[dst, src])  # noqa: E731
            with mock.patch.object(acdc, "_values", wraps=acdc._values) as values, \
                    mock.patch.object(acdc._Guesses, "first", guess):
                t0 = time.perf_counter()
                scores = cf.score_edges(model, task, "acdc", threshold=threshold, naive=run == "naive", **options)
                times.setdefault(run, []).append(time.perf_counter() - t0)
            forwards[run] = values.call_count
            kept[run] = cf.prune(scores, threshold=threshold, absolute=False, remove_dangling=False)
    seconds = {run: statistics.median(t) for run, t in times.items()}
    timing = "one run each" if repeat == 1 else f"medians of {repeat} runs in turns"
    if repeat > 1:  # each round's own ratio too: how far this VM's speed moved within the run
        rounds = sorted(n / b for n, b in zip(times["naive"], times["batched"]))
        timing += f"; a round's ratio {rounds[0]:.1f}–{rounds[-1]:.1f}x"
    print(f"{label} (threshold {threshold}, {kept['batched'].n_edges} kept; {timing}): batched "
          f"{seconds['batched']:.3f} s ({forwards['batched']} forwards), naive {seconds['naive']:.3f} s "
          f"({forwards['naive']} forwards) = {seconds['naive'] / seconds['batched']:.2f}x (target ≥ {target}); "
          f"same circuit: {all(torch.equal(kept[r].mask, kept['naive'].mask) for r in runs)}")
    if ceiling:
        print(f"  with every prediction right: {seconds['ceiling']:.3f} s ({forwards['ceiling']} forwards) = "
              f"{seconds['naive'] / seconds['ceiling']:.1f}x")
    if repeat > 1:  # a figure this VM's speed does not move: the tensor ops each sweep dispatches
        ops = {run: tensor_ops(lambda: cf.score_edges(model, task, "acdc", threshold=threshold, naive=run == "naive",
                                                      **options)) for run in ("batched", "naive")}
        print(f"  tensor ops dispatched: batched {ops['batched']:,}, naive {ops['naive']:,} = "
              f"{ops['naive'] / ops['batched']:.2f}x")


if __name__ == "__main__":
    main()
