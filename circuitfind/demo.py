"""`make demo`: circuit discovery on a model whose true circuit is known, offline.

tracr-reverse is a compiled program (it reverses a sequence); its ground-truth circuit is read off
its weights. The demo scores every edge with three methods, grades them against the truth (ROC AUC),
and writes a run directory with the EAP-IG circuit. About ten seconds on two CPU cores.

Zero ablation: a corrupted prompt of the same length leaves the program's length and index
computations unchanged, so patching with it can only see the value path; zeroing sees them all.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import circuitfind as cf


def main(out: str | None = None) -> Path:
    model = cf.load_model("tracr-reverse").double()
    truth = model.ground_truth["tracr-reverse"]
    print(model)
    print(model.graph, f"— ground truth: {len(truth)} edges")
    task = cf.load_task("tracr-reverse", n=60, seed=0)
    for method in ("eap", "eap-ig", "exact"):
        scores = cf.score_edges(model, task, method, ablation="zero")
        print(f"  {method:7s} ROC AUC against the ground truth: {cf.roc_auc(scores, truth):.3f}")
    out = Path(out or tempfile.mkdtemp(prefix="circuitfind-demo-")) / "tracr-reverse-eap-ig"
    run = cf.discover(model, task, method="eap-ig", ablation="zero", out=out, quiet=True)
    r = run.result
    print(f"eap-ig circuit: {r['n_edges']} of {r['n_edges_total']} edges, faithfulness {r['faithfulness']:.3f}, "
          f"CPR {r['cpr']:.3f}, CMD {r['cmd']:.3f}, ROC AUC {r['roc_auc']:.3f}")
    print("top edges:", ", ".join(f"{name} ({score:+.3f})" for name, score in run.scores.top(5)))
    print(f"run directory: {out}")
    return out


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
