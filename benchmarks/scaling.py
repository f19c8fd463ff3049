"""Time and peak memory of EAP, EAP-IG (5 steps) and the faithfulness curve against model size, prompts and
positions, with the fitted exponent of each (issue 34).

Random-weight models of the GPT-2-small, Qwen2.5-0.5B and Llama-3.2-1B shapes (`benchmarks/plan.py`), fp32,
CPU, random token prompts. Each point runs in a fresh process (peak: ru_maxrss over the resident memory after
the model is built and a small run of the same method made, as plan.py); time: one run, wall clock. The
exponent is the slope of log(value) against log(axis) by least squares, the other axes held at their base
(prompts 8, positions 16, GPT-2 small). Memory is reported both whole (parameters included) and as what the
method adds to the loaded model.

    python benchmarks/scaling.py                          # the reduced default grid: 21 points, 7.5 min on
                                                          # 2 quiet cores (RESULTS.md, session 20)
    python benchmarks/scaling.py --prompts 8,16,32,64,128 --positions 16,32,64,128,256   # the issue's grid
    python benchmarks/scaling.py --shapes gpt2 --prompts 8,16,32,64,128 --positions 16,32,64,128,256
                                                          # its prompts and positions axes alone (on GPT-2 small)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from plan import SHAPES  # noqa: E402


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x."""
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-12)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def point(shape: str, method: str, prompts: int, positions: int) -> dict:
    out = subprocess.run([sys.executable, str(Path(__file__).parent / "plan.py"), "--child", shape, method,
                          str(prompts), str(positions)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def params_of(shape: str) -> float:
    import transformers
    import torch
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(SHAPES[shape]())
    return float(sum(p.numel() for p in hf.parameters()))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="eap,eap-ig,curve")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--prompts", default="8,16,32")
    parser.add_argument("--positions", default="16,32,64")
    args = parser.parse_args()
    base_b, base_p, base_shape = 8, 16, "gpt2"
    axes = {"prompts": [(base_shape, int(b), base_p) for b in args.prompts.split(",")],
            "positions": [(base_shape, base_b, int(p)) for p in args.positions.split(",")],
            "model size": [(s, base_b, base_p) for s in args.shapes.split(",")]}
    size = {s: params_of(s) for s in args.shapes.split(",")}
    cache: dict = {}
    start = time.perf_counter()
    print(f"load at start {os.getloadavg()[0]:.2f}; each point a fresh process, one run")
    for method in args.methods.split(","):
        for axis, cases in axes.items():
            if len(cases) < 2:  # (e.g. --shapes gpt2: no model-size axis to fit)
                continue
            xs, secs, peaks, work = [], [], [], []
            for shape, b, p in cases:
                key = (shape, method, b, p)
                if key not in cache:
                    cache[key] = point(*key)
                m = cache[key]
                x = size[shape] if axis == "model size" else b if axis == "prompts" else p
                xs.append(x), secs.append(m["seconds"]), peaks.append(m["peak"] + m["params"]), work.append(m["peak"])
                print(f"  {method:<7}{axis:<11} {shape:<13} b={b:<4} p={p:<4} {m['seconds']:8.2f} s  "
                      f"peak {(m['peak'] + m['params']) / 2**20:8.0f} MiB (method {m['peak'] / 2**20:6.0f})  "
                      f"load {os.getloadavg()[0]:.2f}", flush=True)
            print(f"{method:<7} against {axis:<11}: time ∝ x^{slope(xs, secs):.2f}, peak ∝ x^{slope(xs, peaks):.2f}, "
                  f"method's memory ∝ x^{slope(xs, work):.2f}", flush=True)
    print(f"{len(cache)} points in {(time.perf_counter() - start) / 60:.1f} min; load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
