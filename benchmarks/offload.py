"""The store off the device and the bf16 store (issue 34): their cost and their error.

1. Cost of store_on="cpu" and store_on="disk" against the store on the device, for eap and eap-ig (5 steps) on a
   random-weight GPT-2-small-shaped model (fp32, CPU) and exact on toy-lm: time as a ratio to the device store
   measured in turns (device, cpu, disk, then again, each round's ratio to its own device run; the median over
   rounds), the bytes read from the store into the device and written to it (`EdgeScores.config["store"]`:
   machine-independent), the plan's device peak with and without the store, and a check that the scores are the
   same bit for bit. On a CPU "device" the copies are memory copies (no PCIe): the time ratio is the cost of the
   staging and the memory map, not of a bus; on a GPU the bytes moved over ~25 GB/s (PCIe 4) are the estimate.
2. Error of store_dtype="bfloat16" against float32 (the store in bf16, every product and sum float32): Pearson r
   and max relative error (max |Δ| over max |score|; and the largest |Δ|/|score| among the 100 largest edges) of
   eap and eap-ig scores, on the random GPT-2-small shape and on the trained toy-lm (IOI).

    python benchmarks/offload.py                     # b × p = 4 × 16 on the GPT-2 shape, 2 rounds
    python benchmarks/offload.py --batch 8 --positions 32 --rounds 3
    python benchmarks/offload.py --plans             # what the plan frees on a GPU at full sizes (configs only)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import circuitfind as cf  # noqa: E402
from common import gpt2_small_random  # noqa: E402
from plan import random_pairs  # noqa: E402

STORES = ("device", "cpu", "disk")


def timed(model, task, method, store_on, **options):
    t0 = time.perf_counter()
    scores = cf.score_edges(model, task, method, store_on=store_on, **options)
    return time.perf_counter() - t0, scores


def cost(name, model, task, method, rounds, **options):
    ratios = {s: [] for s in STORES[1:]}
    last = {}
    for _ in range(rounds):
        secs = {}
        for store_on in STORES:
            secs[store_on], last[store_on] = timed(model, task, method, store_on, **options)
        for s in STORES[1:]:
            ratios[s].append(secs[s] / secs["device"])
    same = all(torch.equal(last["device"].scores, last[s].scores) for s in STORES[1:])
    b, p = task.batch(model).clean.tokens.shape
    plans = {s: cf.plan(model, task, "exact" if method == "exact" else method, store_on=s,
                        **({"steps": options["steps"]} if "steps" in options else {})) for s in ("device", "cpu")}
    for s in STORES[1:]:
        st = last[s].config["store"]
        print(f"{name:<10}{method:<8}{b}×{p:<5}{s:<6} time ×{statistics.median(ratios[s]):.2f} "
              f"(rounds {', '.join(f'{r:.2f}' for r in ratios[s])})  moved {st['moved_bytes'] / 2**20:9.1f} MiB "
              f"(plan {plans['cpu'].moved / 2**20:9.1f})  written {st['written_bytes'] / 2**20:7.1f} MiB  "
              f"same bits: {same}  plan on the device {plans['device'].total / 2**20:.0f} → "
              f"{plans['cpu'].total / 2**20:.0f} MiB  load {os.getloadavg()[0]:.2f}", flush=True)


def error(name, model, task, method, **options):
    want = cf.score_edges(model, task, method, **options).scores
    got = cf.score_edges(model, task, method, store_dtype="bfloat16", **options).scores
    on = model.graph.edge_mask
    a, b = want[on].double(), got[on].double()
    r = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    top = a.abs().topk(min(100, len(a))).indices
    print(f"{name:<10}{method:<8} bf16 store vs float32: Pearson r {r:.7f}, max |Δ|/max|s| "
          f"{((a - b).abs().max() / a.abs().max()).item():.2e}, max |Δ|/|s| over the top 100 "
          f"{((a - b)[top].abs() / a[top].abs()).max().item():.2e}  load {os.getloadavg()[0]:.2f}", flush=True)


def plans():
    """What the plan says the store off the device, and in bf16, frees on the device at sizes where it matters
    (from the configs alone: no weights)."""
    import transformers
    from plan import SHAPES
    llama8b = transformers.LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                                       max_position_embeddings=131072, rope_theta=5e5, bos_token_id=0, eos_token_id=0)
    cases = [("gpt2", SHAPES["gpt2"](), torch.float32, 8, 128), ("llama-3.2-1b", SHAPES["llama-3.2-1b"](), torch.float32, 8, 128),
             ("llama-3.1-8b", llama8b, torch.bfloat16, 8, 128)]
    for name, config, dtype, b, p in cases:
        for method in ("eap", "eap-ig"):
            rows = []
            for store_on, store_dtype in (("device", None), ("cpu", None), ("device", "bfloat16"), ("cpu", "bfloat16")):
                if store_dtype == "bfloat16" and dtype == torch.bfloat16:
                    continue
                pl = cf.plan(config, None, method, positions=p, examples=b, dtype=dtype, store_on=store_on,
                             store_dtype=store_dtype, device="cuda")
                rows.append(f"{store_on}{'/bf16' if store_dtype else ''} {pl.total / 2**30:.2f} GiB"
                            + (f" (+{pl.off_device / 2**30:.2f} GiB off, {pl.moved / 2**30:.1f} GiB sent)"
                               if pl.off_device else ""))
            print(f"plan (cuda) {name:<13}{method:<7}{str(dtype).removeprefix('torch.'):<9}{b}×{p}: " + "; ".join(rows),
                  flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--positions", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--plans", action="store_true", help="only the plans at full sizes (no runs)")
    parser.add_argument("--methods", default="eap,eap-ig,exact", help="whose cost to measure")
    parser.add_argument("--no-error", action="store_true", help="skip the bf16 store's error")
    args = parser.parse_args()
    if args.plans:
        return plans()
    torch.set_grad_enabled(False)
    print(f"load at start {os.getloadavg()[0]:.2f}; CPU, fp32; ratios to the store on the device, in turns")
    gpt2 = cf.from_hf(gpt2_small_random())
    pairs = random_pairs(args.batch, args.positions)
    toy = cf.load_model("toy-lm")
    ioi = cf.load_task("ioi", n=16, seed=0)
    cf.score_edges(gpt2, random_pairs(1, 4), "eap")  # (first-call costs out of the measured turns)
    methods = args.methods.split(",")
    if "eap" in methods:
        cost("gpt2", gpt2, pairs, "eap", args.rounds)
    if "eap-ig" in methods:
        cost("gpt2", gpt2, pairs, "eap-ig", args.rounds, steps=5)
    if "exact" in methods:
        cost("toy-lm", toy, ioi, "exact", args.rounds)
    for name, model, task in () if args.no_error else (("gpt2", gpt2, pairs), ("toy-lm", toy, ioi)):
        error(name, model, task, "eap")
        error(name, model, task, "eap-ig", steps=5)


if __name__ == "__main__":
    main()
