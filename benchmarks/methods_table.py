"""The methods side by side on every toy-lm task (issue 33): Pearson r with exact noising and with the mean of
noising and denoising, CPR and CMD (MIB's faithfulness curve, the task's metric), and time as a multiple of
EAP's, measured in the same run. atp-star with GradDrop scores magnitudes (≥ 0), so its r against signed exact
patching is r against |exact| (marked); atp-star graddrop=false is signed. Prints a Markdown table.
Run from the repository root: .venv/bin/python benchmarks/methods_table.py [n] [method,...|all] [task,...] (eap
and eap-ig are always run: the time base and the CPR/CMD to beat; "eap-gp:step=0.25;steps=10" adds a method with
options of its own). Prints the load average before and after.
induction is scored on logit-diff (its KL is at its minimum at the clean run, where first-order methods refuse)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import circuitfind as cf  # noqa: E402

TASKS = ("ioi", "greater-than", "sva", "gendered-pronoun", "capital-country", "arithmetic", "docstring", "mcqa",
         "induction")
METHODS = [("eap", {}), ("eap-ig", {}), ("eap-ig-activations", {}), ("atp-star", {}),
           ("atp-star", {"graddrop": False}), ("relp", {}), ("ensemble", {}), ("eap-gp", {})]


def pearson(a, b) -> float:
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def main(n: int = 40, only: list[str] | None = None, tasks: list[str] | None = None):
    methods = [(m, o) for m, o in METHODS if only is None or m in only or m in ("eap", "eap-ig")]
    for item in only or []:  # "eap-gp:step=0.25": a method with options of its own, beside the defaults
        if ":" in item:
            method, _, opts = item.partition(":")
            methods.append((method, {k: float(v) if "." in v else int(v)
                                     for k, v in (o.split("=") for o in opts.split(";"))}))
    methods = [(m, o) for m, o in methods if m in cf.methods.METHODS]
    model = cf.load_model("toy-lm").double()
    print(f"toy-lm, {model.graph.n_edges} edges, n={n}, corrupted ablation; load average {os.getloadavg()}\n")
    print("| task | method | r noising | r mean(noising, denoising) | CPR | CMD | time / EAP |")
    print("|---|---|---|---|---|---|---|")
    wins = {}
    for name in tasks or TASKS:
        # induction's own metric is KL, at its minimum at the clean run: first-order methods refuse it (every
        # gradient 0), so it is scored here, as in benchmarks/correlation.py's logit-diff rows, on logit-diff
        task = cf.load_task(name, n=n, metric="logit-diff" if name == "induction" else None)
        noising = cf.score_edges(model, task, "exact").values()
        denoising = cf.score_edges(model, task, "exact-denoising").values()
        both = (noising + denoising) / 2
        rows, base = {}, None
        for method, opts in methods:
            label = method + ("" if not opts else " (" + ", ".join(f"{k}={str(v).lower()}" for k, v in opts.items()) + ")")
            start = time.perf_counter()
            scores = cf.score_edges(model, task, method, **opts)
            seconds = time.perf_counter() - start
            base = seconds if method == "eap" else base
            v = scores.values()
            magnitude = method == "atp-star" and not opts
            ref, ref2 = (noising.abs(), both.abs()) if magnitude else (noising, both)
            curve = cf.faithfulness_curve(model, task, scores)
            rows[label] = (pearson(v, ref), pearson(v, ref2), curve.cpr, curve.cmd, seconds / base, magnitude)
        ig = rows["eap-ig"]
        for label, (r1, r2, cpr, cmd, t, magnitude) in rows.items():
            mark = " (vs \\|exact\\|)" if magnitude else ""
            print(f"| {name} | {label} | {r1:.3f}{mark} | {r2:.3f}{mark} | {cpr:.3f} | {cmd:.3f} | {t:.1f}x |")
            if label != "eap-ig" and cpr > ig[2] and cmd <= ig[3] + 1e-9:
                wins.setdefault(label, []).append(name)
        sys.stdout.flush()
    print("\nbeats eap-ig's CPR without a worse CMD, by method: "
          + "; ".join(f"{m}: {len(t)}/9 ({', '.join(t)})" for m, t in wins.items()) if wins else "\nnone beats eap-ig")
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40,
         sys.argv[2].split(",") if len(sys.argv) > 2 and sys.argv[2] != "all" else None,
         sys.argv[3].split(",") if len(sys.argv) > 3 else None)
