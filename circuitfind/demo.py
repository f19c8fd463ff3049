"""`make demo`: circuit discovery offline, on the shipped models, ending with a report to open.

1. tracr-reverse, a compiled program whose true circuit is known (derived from the program's dataflow:
   ACDC's circuit): four methods scored against it (ROC AUC). Zero ablation: a corrupted prompt of the
   same length leaves the program's length and index computations unchanged, so only zeroing sees the
   whole circuit. The gradient methods miss the length path, whose MLP is a flat staircase to them.
2. toy-lm, the project's small trained language model, on IOI with EAP-IG: the smallest circuit
   reaching 90% faithfulness, written as a run directory with figures, tables and report.html.

About half a minute on two CPU cores.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import circuitfind as cf


def main(out: str | None = None) -> Path:
    model = cf.load_model("tracr-reverse").double()
    truth = model.ground_truth["tracr-reverse"]
    print(f"tracr-reverse: {model.graph}, ground truth {len(truth)} edges (the program's dataflow: ACDC's circuit)")
    task = cf.load_task("tracr-reverse", n=60, seed=0)
    for method in ("eap", "eap-ig", "exact", "acdc"):
        scores = cf.score_edges(model, task, method, ablation="zero")
        print(f"  {method:7s} ROC AUC against the ground truth: {cf.roc_auc(scores, truth):.3f}")

    model = cf.load_model("toy-lm")
    print(f"\ntoy-lm: {model.graph}")
    out = Path(out or tempfile.mkdtemp(prefix="circuitfind-demo-")) / "ioi-toy-lm"
    run = cf.discover(model, "ioi", method="eap-ig", out=out, quiet=True, overwrite=True)  # the demo's own run
    r = run.result
    print(f"IOI, eap-ig: a circuit of {r['n_edges']} of {r['n_edges_total']} edges, faithfulness "
          f"{r['faithfulness']:.3f}, CPR {r['cpr']:.3f}, CMD {r['cmd']:.3f}")
    print("top edges:", ", ".join(f"{name} ({score:+.3f})" for name, score in run.scores.top(5)))
    page = out / "report.html"
    print(f"report: {page}")
    print(f"explore it live: circuitfind serve --model toy-lm --runs {out.parent}")
    return page


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
