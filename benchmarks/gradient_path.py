"""Where EAP-GP's GradPath goes (issue 33): on toy-lm tasks, after each step, how far the model's output still is
from the ablated run's (median over examples of ‖G(γ_j) − G(x')‖ / ‖G(x) − G(x')‖, G the answer position's
logits) and how far the embedding is from the ablated one (median ‖γ_j − x'‖, against ‖x − x'‖, the straight
line's length); machine-independent. Then the time of eap, eap-ig and eap-gp (5 steps) on ioi, the median of 5
runs taken in turns on one thread: by passes EAP-GP costs 4 forwards + 2k forward-and-backward passes, EAP-IG 2 + k.
Run from the repository root: .venv/bin/python benchmarks/gradient_path.py [n] [steps] [step] [task,...]"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import circuitfind as cf  # noqa: E402
from circuitfind.engine.gradient_path import output_at, gradient_path  # noqa: E402
from circuitfind.methods.common import setups  # noqa: E402


def main(n: int = 40, steps: int = 5, step: float = 1.0, tasks=("ioi", "greater-than", "mcqa")):
    model = cf.load_model("toy-lm").double()
    print(f"toy-lm, n={n}, {steps} steps of {step}, corrupted ablation\n")
    print("| task | ‖x − x'‖ | " + " | ".join(f"step {j}: output / embedding" for j in range(1, steps + 1)) + " |")
    print("|---|---|" + "---|" * steps)
    for name in tasks:
        s = next(iter(setups(model, cf.load_task(name, n=n), "corrupted", share_prefix=False)))
        inputs = s.batch.clean
        x = model.embed(inputs.tokens, model.positions(inputs.attention_mask))
        x_abl = s.ablated[0].expand_as(x)
        path = gradient_path(model, inputs, s.ablated, steps, step)
        with torch.no_grad():
            target = output_at(model, inputs, x_abl)
            start = (output_at(model, inputs, x) - target).norm(dim=-1)
            cells = []
            for gamma in path:
                output = float(((output_at(model, inputs, gamma) - target).norm(dim=-1) / start).median())
                cells.append(f"{output:.3f} / {float((gamma - x_abl).flatten(1).norm(dim=1).median()):.2f}")
        print(f"| {name} | {float((x - x_abl).flatten(1).norm(dim=1).median()):.2f} | " + " | ".join(cells) + " |")

    timing(n)


def timing(n: int, runs: int = 5):
    torch.set_num_threads(1)
    model, task = cf.load_model("toy-lm"), cf.load_task("ioi", n=n)
    times = {m: [] for m in ("eap", "eap-ig", "eap-gp")}
    for m in times:  # warm up
        cf.score_edges(model, task, m)
    for _ in range(runs):
        for m, t in times.items():
            start = time.perf_counter()
            cf.score_edges(model, task, m)
            t.append(time.perf_counter() - start)
    median = {m: sorted(t)[runs // 2] for m, t in times.items()}
    print(f"\nioi, n={n}, one thread, median of {runs} in turns: " + ", ".join(f"{m} {v * 1e3:.0f} ms" for m, v in median.items())
          + f"; eap-gp / eap-ig {median['eap-gp'] / median['eap-ig']:.2f} (by passes 2.0); load average {os.getloadavg()}")


if __name__ == "__main__":
    a = sys.argv[1:]
    main(int(a[0]) if a else 40, int(a[1]) if len(a) > 1 else 5, float(a[2]) if len(a) > 2 else 1.0,
         a[3].split(",") if len(a) > 3 else ("ioi", "greater-than", "mcqa"))
