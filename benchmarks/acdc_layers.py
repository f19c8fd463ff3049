"""Where batched ACDC's time goes on toy-lm (IOI), by the layer its forwards start from, against the
naive loop's full forward; then the sweep's time and forward count at several chunk sizes.

A forward for receivers in layer L starts from the clean run below L and recomputes L and every layer
above for each mask, so its cost per mask says whether a sweep is bound by per-forward overhead (then
fewer, larger forwards pay) or by compute (then only fewer mask rows do). Run from the repository root:

    python benchmarks/acdc_layers.py [PROMPTS ...]      # default: 20 2
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import circuitfind as cf  # noqa: E402
import circuitfind.methods.acdc as acdc  # noqa: E402


def by_start_layer(model, task, threshold: float, **options) -> tuple[float, dict]:
    """Seconds of one sweep, and {start layer: [forwards, masks, seconds]} of its masked forwards."""
    stats = defaultdict(lambda: [0, 0, 0.0])
    values = acdc._values

    def timed(model, batches, cfg, masks, starts=None, workspace=None):
        t0 = time.perf_counter()
        out = values(model, batches, cfg, masks, starts, workspace)
        row = stats["full" if starts is None else starts[0].layer]
        row[0], row[1], row[2] = row[0] + 1, row[1] + masks.shape[0], row[2] + time.perf_counter() - t0
        return out

    with mock.patch.object(acdc, "_values", timed):
        t0 = time.perf_counter()
        cf.score_edges(model, task, "acdc", threshold=threshold, **options)
        return time.perf_counter() - t0, dict(stats)


def main(prompts=(20, 2), threshold=0.01):
    torch.set_grad_enabled(False)
    model = cf.load_model("toy-lm")
    for n in prompts:
        task = cf.load_task("ioi", n=n)
        cf.score_edges(model, task, "acdc", threshold=threshold, chunk=4)  # warm-up
        naive_s, naive = by_start_layer(model, task, threshold, naive=True)
        forwards, _, seconds = naive["full"]
        per_forward = seconds / forwards
        batched_s, stats = by_start_layer(model, task, threshold)
        print(f"toy-lm IOI, {n} prompts, threshold {threshold}: naive {naive_s:.2f} s ({forwards} full forwards, "
              f"{per_forward * 1e3:.2f} ms each); batched {batched_s:.2f} s")
        names = {"full": "the embeddings (the starting circuit)", model.cfg.n_layers: "the logits"}
        for layer in sorted(stats, key=str):
            f, masks, s = stats[layer]
            print(f"  forwards from {names.get(layer, f'layer {layer}')}: {f} "
                  f"with {masks} masks, {s:.3f} s = {s / masks * 1e3:.2f} ms a mask "
                  f"({s / masks / per_forward:.2f} of a naive forward)")
        for chunk in (16, 32, 64):
            with mock.patch.object(acdc, "_values", wraps=acdc._values) as calls:
                t0 = time.perf_counter()
                cf.score_edges(model, task, "acdc", threshold=threshold, chunk=chunk)
                seconds = time.perf_counter() - t0
            print(f"  chunk {chunk}: {seconds:.3f} s, {calls.call_count} forwards")


if __name__ == "__main__":
    main(tuple(int(a) for a in sys.argv[1:]) or (20, 2))
