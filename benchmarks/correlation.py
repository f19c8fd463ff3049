"""Pearson correlation of first-order scores (EAP, EAP-IG and its variants) with exact patching, on the toy models
(edges; and nodes, eap-node and eap-ig-node against exact-node):
toy-lm on each of its tasks, the hand-weighted induction model of the tests, the trained
toy-induction, and the two tracr models, each on its task's metric; where that metric saturates
(prob-diff, KL at the clean run), the same comparison on logit-diff too, to tell the metric's curvature
from the method's error. (The EAP-IG paper reports 0.44–0.78 for EAP on GPT-2 small.)

Under corrupted ablation the same EAP-IG scores are also set against exact patching in the other
direction (`exact-denoising`: the corrupted run, each edge given its clean value) and against the
mean of the two. IG integrates along the path between the runs: where the metric is quadratic along it,
IG is exactly that mean (`tests/test_methods.py`), so where noising and denoising disagree (edges that
interact: redundant copies, ANDs, a saturated softmax) EAP-IG cannot track noising alone, and the
r(noising, denoising) column says how far they disagree. Run from the repository root."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import circuitfind as cf  # noqa: E402
from circuitfind.task import metric_name  # noqa: E402
from tests.induction_model import induction_model  # noqa: E402


def pearson(a, b) -> float:
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def main():
    cases = [("induction (hand-weighted)", induction_model().double(), "induction", "corrupted"),
             ("toy-induction (trained)", cf.load_model("toy-induction").double(), "induction", "corrupted"),
             ("tracr-reverse", cf.load_model("tracr-reverse").double(), "tracr-reverse", "zero"),
             ("tracr-xproportion", cf.load_model("tracr-xproportion").double(), "tracr-xproportion", "zero")]
    toy_lm = cf.load_model("toy-lm").double()
    cases += [(f"toy-lm {t}", toy_lm, t, "corrupted") for t in
              ("ioi", "greater-than", "sva", "gendered-pronoun", "capital-country", "arithmetic", "docstring", "mcqa",
               "induction")]
    for label, model, task_name, ablation in cases:
        task = cf.load_task(task_name, n=40)
        exact = cf.score_edges(model, task, "exact", ablation=ablation).values()
        values = {}  # scores by label, kept for the comparisons with denoising below
        # (under KL, eap and eap-node refuse: the gradient of KL at the clean run is 0, every score noise)
        first_order = ("eap",) if task.metric != "kl" else ()
        for method, opts in [(m, {}) for m in first_order] + [("eap-ig", {}), ("eap-ig", {"steps": 20}),
                                                             ("eap-ig-activations", {}), ("eap-ig-edges", {}),
                                                             ("clean-corrupted", {})]:
            label_m = method + (f" ({opts['steps']} steps)" if opts else "")
            values[label_m] = cf.score_edges(model, task, method, ablation=ablation, **opts).values()
        r = {m: pearson(v, exact) for m, v in values.items()}
        print(f"{label} ({ablation} ablation, {metric_name(task)}, {model.graph.n_edges} edges): "
              + ", ".join(f"{m} r = {v:.3f}" for m, v in r.items()))
        if ablation == "corrupted":  # EAP-IG against both directions of exact patching, and their mean
            ig = values["eap-ig"]
            denoising = cf.score_edges(model, task, "exact-denoising", ablation=ablation).values()
            print(f"    eap-ig against denoising r = {pearson(ig, denoising):.3f}, against the mean of noising and "
                  f"denoising r = {pearson(ig, (exact + denoising) / 2):.3f}; "
                  f"r(noising, denoising) = {pearson(exact, denoising):.3f}")
        # node level: one score per node, against each node ablated whole
        exact_nodes = cf.score_edges(model, task, "exact-node", ablation=ablation).node_values()
        nodes = {m: cf.score_edges(model, task, m, ablation=ablation).node_values()
                 for m in ("eap-node",) * (task.metric != "kl") + ("eap-ig-node",)}
        r = {m: pearson(v, exact_nodes) for m, v in nodes.items()}
        if ablation == "corrupted":
            denoising_nodes = cf.score_edges(model, task, "exact-node-denoising", ablation=ablation).node_values()
            r["eap-ig-node against the mean of noising and denoising"] = pearson(nodes["eap-ig-node"],
                                                                                 (exact_nodes + denoising_nodes) / 2)
        print(f"    nodes ({model.graph.n_senders}) against exact-node: "
              + ", ".join(f"{m} r = {v:.3f}" for m, v in r.items()))
        if task.metric in ("prob-diff", "kl"):  # saturating metrics: the same scores measured on logit-diff
            task = cf.load_task(task_name, n=40, metric="logit-diff")  # what the MIB circuit track attributes with
            exact = cf.score_edges(model, task, "exact", ablation=ablation).values()
            r = {m: pearson(cf.score_edges(model, task, m, ablation=ablation).values(), exact)
                 for m in ("eap", "eap-ig")}
            print("    scored on logit-diff instead: " + ", ".join(f"{m} r = {v:.3f}" for m, v in r.items()))


if __name__ == "__main__":
    main()
