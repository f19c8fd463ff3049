"""What `batch_size=` buys: peak memory and time of scoring a task whole against a batch of examples at a
time, on the GPT-2-small-shaped random model (random token prompts, 48 examples × 64 tokens, fp32, CPU).

Held whole, the ablated outputs of every sender ([src, batch, pos, d_model]: 157 × 48 × 64 × 768 floats,
1.4 GiB) and the sender differences dominate; a batch of 8 holds a sixth of them. ACDC holds every
batch's ablated outputs (each of its forwards reads them all) and saves what grows with the masks: its
line is one forward of a sweep late at layer 0, 4 masks over a pruned circuit, each patching its own
input edge, whose changes reach every layer (with ACDC's default 16 masks the whole task's forward was
killed for memory on a 24 GB machine; batches of 8 peaked at 8.7 GB). Each peak is the median of 3
fresh processes (ACDC: one, and one timed run of each side, at half a minute a forward); other times
are medians of the two sides run in turns. Run from the repository root:

    python benchmarks/batching.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import gpt2_small_random, peak_memory_in_process, report_peak, timeit_alternating  # noqa: E402
from methods import RandomPairs  # noqa: E402

import circuitfind as cf  # noqa: E402

N, BATCH = 48, 8


def roles(model, task):
    def run(method, b):
        if method == "acdc":
            return lambda: acdc_forward(model, task, b)
        if method == "eap-ig":
            return lambda: cf.score_edges(model, task, method, batch_size=b, steps=2).scores
        return lambda: cf.score_edges(model, task, method, batch_size=b).scores
    return {f"{method} {'whole' if b is None else f'batch {b}'}": run(method, b)
            for method in ("eap", "eap-ig", "acdc") for b in (None, BATCH)}


def acdc_forward(model, task, batch_size, masks=4, density=0.05):
    """One of ACDC's forwards late in a sweep: `masks` chained removals of edges into layer 0 from a
    random circuit of `density` of the edges, every batch from its clean run below layer 0 → Δ [masks]."""
    from circuitfind.engine.patching import Workspace, prefix
    from circuitfind.methods import acdc
    from circuitfind.methods.common import setups

    g = model.graph
    circuit = (torch.rand(g.edge_mask.shape, generator=torch.Generator().manual_seed(0)) < density) & g.edge_mask
    tested = [g.qkv_receiver(0, t, 0) + h for h in range(g.n_heads) for t in "qkv"][:masks]
    circuit = circuit.to(model.dtype)
    circuit[tested, 0] = 1  # each tested receiver reads the input: its removal changes the circuit
    chain = circuit.expand(len(tested), -1, -1).clone()
    for j, r in enumerate(tested):
        chain[j:, r, 0] = 0  # member j: the first j + 1 edges removed, as ACDC's predicted chains
    batches = list(setups(model, task, "corrupted", 0, batch_size))
    starts = [prefix(model, s.batch.clean, s.ablated, 0, s.shared) for s in batches]
    return acdc._values(model, batches, acdc.ACDCConfig(metric="kl"), chain, starts, Workspace())


def timed_once(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main():
    torch.set_grad_enabled(False)
    model = cf.from_hf(gpt2_small_random())
    task = RandomPairs(n=N)
    run = roles(model, task)
    if "--peak" in sys.argv:  # the child side of a memory measurement
        return report_peak(run[sys.argv[sys.argv.index("--peak") + 1]])
    # every peak first, from fresh processes, before this one runs anything
    peaks = {r: statistics.median(peak_memory_in_process(__file__, r) for _ in range(1 if "acdc" in r else 3))
             for r in run}
    for method in ("eap", "eap-ig", "acdc"):
        whole, batched = f"{method} whole", f"{method} batch {BATCH}"
        if method == "acdc":
            (t_whole, a), (t_batched, b) = (timed_once(run[whole]), timed_once(run[batched]))
        else:
            t_whole, t_batched = timeit_alternating(run[whole], run[batched], repeat=3)
            a, b = run[whole](), run[batched]()
        same = torch.allclose(a, b, rtol=1e-4, atol=1e-6)
        label = {"eap-ig": "eap-ig (2 steps)", "acdc": "acdc, one forward of 4 masks at layer 0"}.get(method, method)
        print(f"{label}, {N} examples: whole {peaks[whole] / 2**20:.0f} MiB, {t_whole:.2f} s; batch_size={BATCH} "
              f"{peaks[batched] / 2**20:.0f} MiB, {t_batched:.2f} s ({peaks[batched] / peaks[whole]:.2f}x the memory, "
              f"{t_batched / t_whole:.2f}x the time); same values: {same}")


if __name__ == "__main__":
    main()
