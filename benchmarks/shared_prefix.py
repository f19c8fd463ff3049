"""Skipping the prefix the clean and corrupted prompts share (`engine/shared_prefix.py`): what it buys.

Each case runs the same work with and without the skip, in turns (medians), and checks the results
agree. No target: the issues ask for none; the figures are on record here and in RESULTS.md.

- GPT-2-small-sized random model, 8 prompts × 64 tokens whose corrupted versions change only the last
  16 (a late corruption, as in greater-than): one dense masked forward, the faithfulness curve and
  EAP-IG (whose passes skip the prefix too: no edge has an effect there).
- toy-lm, 30 prompts: `exact` on greater-than (8 of 13 positions shared), mcqa (10 of 23) and IOI (2 of 19).
"""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import gpt2_small_random, timeit_alternating  # noqa: E402

import circuitfind as cf  # noqa: E402
import circuitfind.methods.common as common  # noqa: E402
from circuitfind.engine.ablation import ablated_outputs  # noqa: E402
from circuitfind.engine.patching import Inputs, masked_forward, shared_prefix  # noqa: E402
from circuitfind.engine.shared_prefix import clean_run  # noqa: E402
from circuitfind.task import Example, Task  # noqa: E402


class LateCorruption(Task):
    """Random prompts whose corrupted version changes the last `changed` tokens alone."""
    name = "late-corruption"
    metric = "logit-diff"
    length, changed = 64, 16

    def example(self, rng, words):
        a = words.random_tokens(rng, self.length)
        b = a[: self.length - self.changed] + words.random_tokens(rng, self.changed)
        return Example(clean=a, corrupt=b, correct=a[-1], wrong=b[-1])


def whole_prompts():
    """Setups without a shared prefix: every masked forward over every position, as before the skip."""
    return mock.patch.object(common, "clean_run", lambda model, inputs, other=None: clean_run(model, inputs, None))


def both_ways(compute, repeat=3):
    """compute() timed over whole prompts and skipping the shared prefix, in turns (medians): the two
    times and the two results."""
    out = {}

    def whole():
        with whole_prompts():
            out["whole"] = compute()

    def skip():
        out["skip"] = compute()
    t_whole, t_skip = timeit_alternating(whole, skip, repeat=repeat)
    return t_whole, t_skip, out["whole"], out["skip"]


def main():
    torch.set_grad_enabled(False)
    model = cf.from_hf(gpt2_small_random())
    g = model.graph
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50257, (8, 64), generator=gen)
    late = tokens.clone()
    late[:, 48:] = torch.randint(0, 50257, (8, 16), generator=gen)
    clean, corrupt = Inputs.of(tokens), Inputs.of(late)
    abl = ablated_outputs(model, "corrupted", clean, corrupt)
    shared = shared_prefix(model, clean, corrupt)
    dense = torch.rand(g.n_receivers, g.n_senders, generator=torch.Generator().manual_seed(1))
    t_whole, t_skip = timeit_alternating(lambda: masked_forward(model, clean, abl, dense),
                                         lambda: masked_forward(model, clean, abl, dense, shared=shared), repeat=5)
    gap = (masked_forward(model, clean, abl, dense)
           - masked_forward(model, clean, abl, dense, shared=shared)).abs().max()
    print(f"GPT-2-small-sized, 8 × 64 tokens, {shared.n} shared: dense masked forward {t_whole * 1e3:.0f} ms whole, "
          f"{t_skip * 1e3:.0f} ms skipping the prefix = {t_whole / t_skip:.2f}x; max |Δlogit| {gap:.1e}")

    task = LateCorruption(n=8)
    scores = cf.score_edges(model, task, "eap")
    test = task.with_split("test")
    t_whole, t_skip, a, b = both_ways(lambda: cf.faithfulness_curve(model, test, scores, ranking="signed"))
    gap = max(abs(x - y) for x, y in zip(a.faithfulness_signed, b.faithfulness_signed))
    print(f"  faithfulness curve (10 sizes, signed): {t_whole:.2f} s whole, {t_skip:.2f} s skipping = "
          f"{t_whole / t_skip:.2f}x; max |Δf| {gap:.1e}")
    t_whole, t_skip, a, b = both_ways(lambda: cf.score_edges(model, task, "eap-ig").scores)
    print(f"  EAP-IG (5 steps): {t_whole:.2f} s whole, {t_skip:.2f} s skipping = {t_whole / t_skip:.2f}x; "
          f"max |Δscore| {(a - b).abs().max():.1e} (largest {a.abs().max():.1e})")

    toy = cf.load_model("toy-lm")
    for name in ("greater-than", "mcqa", "ioi"):
        task = cf.load_task(name, n=30)
        t_whole, t_skip, a, b = both_ways(lambda: cf.score_edges(toy, task, "exact").scores)  # noqa: B023
        n = next(iter(common.setups(toy, task, "corrupted"))).shared
        print(f"toy-lm {name}, 30 prompts ({0 if n is None else n.n} of {task.batch(toy).clean.tokens.shape[1]} "
              f"positions shared): exact {t_whole:.2f} s whole, {t_skip:.2f} s skipping = {t_whole / t_skip:.2f}x; "
              f"max |Δscore| {(a - b).abs().max():.1e}")


if __name__ == "__main__":
    main()
