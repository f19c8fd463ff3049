"""How much of a circuit is the prompts' noise (issue 31): `cf.stability` on the shipped toy-lm, IOI and
greater-than, the way Méloux et al. (2025) resampled IOI's prompts (Jaccard 0.67 on GPT-2 small).

For each task: the circuit size discover picks (the smallest MIB size whose faithfulness reaches 0.9, on the
task at seed 0), then EAP-IG's circuits of that size on RESAMPLES bootstrap resamples of the examples for each
of the task's sampling seeds. Printed: the Jaccard overlaps of every pair of circuits, by edges and by nodes
(median and 95% percentile interval), how many edges are always / sometimes in, and the bootstrap interval of
the chosen circuit's faithfulness. Not timed: these are the figures a paper would quote.
"""

from __future__ import annotations

import argparse

import circuitfind as cf

N, RESAMPLES, SEEDS = 100, 50, (0, 1, 2)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default="eap-ig")
    parser.add_argument("--tasks", default="ioi,greater-than")
    args = parser.parse_args()
    model = cf.load_model("toy-lm")
    for name in args.tasks.split(","):
        run = cf.discover(model, name, args.method, n=N, seed=0, quiet=True, report=False, resamples=1000)
        edges, ci = run.result["n_edges"], run.result["ci"]
        st = cf.stability(model, cf.load_task(name, n=N, seed=0), args.method, edges=edges, resamples=RESAMPLES,
                          seeds=SEEDS)
        s = st.summary()
        e, nd = s["jaccard_edges"], s["jaccard_nodes"]
        print(f"toy-lm {name} / {args.method}: {edges} of {model.graph.n_edges} edges, faithfulness "
              f"{run.result['faithfulness']:.3f} [{ci['faithfulness'][0]:.3f}, {ci['faithfulness'][1]:.3f}], "
              f"CPR {run.result['cpr']:.3f} [{ci['cpr'][0]:.3f}, {ci['cpr'][1]:.3f}]; {s['circuits']} circuits "
              f"({RESAMPLES} resamples × seeds {','.join(map(str, SEEDS))}): Jaccard of edges {e['median']:.3f} "
              f"[{e['interval'][0]:.3f}, {e['interval'][1]:.3f}], of nodes {nd['median']:.3f} "
              f"[{nd['interval'][0]:.3f}, {nd['interval'][1]:.3f}]; {s['always']} edges always in, "
              f"{s['sometimes']} sometimes")


if __name__ == "__main__":
    main()
