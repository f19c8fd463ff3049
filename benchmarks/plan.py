"""The memory planner against measured peaks (issue 34).

Random-weight models of the GPT-2-small, Qwen2.5-0.5B and Llama-3.2-1B shapes, built from their configs
offline, fp32, CPU. For each of eap, eap-ig (5 steps), exact and the faithfulness curve, a fresh process
builds the model, measures what the parameters added to its resident memory, then runs the method once and
measures the peak it added (VmHWM, reset just before the run, over the resident memory then). The plan is
made from the config alone (`cf.plan(config, ...)`, no weights). Exact patching runs the engine's
`edge_effects` for two receivers (the MLPs at a quarter and at three quarters of the depth: 32 masks a forward,
each continuing the clean run from its layer), not every edge: its peak is one such batch of masks; its time
is not what is measured here.

    python benchmarks/plan.py                      # every shape and method, b × p = 4 × 32 (Llama: 2 × 32)
    python benchmarks/plan.py --shapes gpt2 --methods eap --batch 8 --positions 64
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch
import transformers

sys.path.insert(0, str(Path(__file__).parent))

import circuitfind as cf  # noqa: E402
from circuitfind.task import Example, Task  # noqa: E402

SHAPES = {  # the published configs' architecture fields
    "gpt2": lambda: transformers.GPT2Config(bos_token_id=0, eos_token_id=0),
    "qwen2.5-0.5b": lambda: transformers.Qwen2Config(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=0),
    "llama-3.2-1b": lambda: transformers.LlamaConfig(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
        vocab_size=128256, max_position_embeddings=131072, rope_theta=5e5, tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=0),
}
TINY = {"gpt2": {"n_layer": 1, "n_embd": 64, "n_head": 2, "vocab_size": 100},
        "qwen2.5-0.5b": {"num_hidden_layers": 1, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                         "num_key_value_heads": 2, "vocab_size": 100},
        "llama-3.2-1b": {"num_hidden_layers": 1, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                         "num_key_value_heads": 2, "vocab_size": 100}}
METHODS = ("eap", "eap-ig", "exact", "curve")


def random_pairs(n: int, length: int) -> Task:
    class RandomPairs(Task):
        """Random clean/corrupted token prompts (different from the first token on); the answer is the clean
        prompt's first token."""
        name = "random-pairs"
        metric = "logit-diff"

        def example(self, rng, words):
            a, b = words.random_tokens(rng, length), words.random_tokens(rng, length)
            return Example(clean=a, corrupt=b, correct=a[0], wrong=b[0] if b[0] != a[0] else (a[0] + 1) % 1000)
    return RandomPairs(n=n, seed=0)


def _prepare(model, method: str, g) -> None:
    task = random_pairs(1, 4)
    if method == "curve":
        scores = cf.EdgeScores(torch.randn(g.n_receivers, g.n_senders) * g.edge_mask, g, method="random")
        cf.faithfulness_curve(model, task, scores)
    elif method == "exact":
        from circuitfind.engine.patching import edge_effects
        from circuitfind.methods.common import prepare
        setup = prepare(model, task, "corrupted")
        edge_effects(model, setup.batch.clean, setup.ablated, setup.per_mask, receivers=[g.mlp_receiver(1)])
    else:
        cf.score_edges(model, task, method, **({"steps": 2} if method == "eap-ig" else {}))


def _rss() -> int:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return psutil.Process().memory_info().rss


def child(shape: str, method: str, batch: int, positions: int) -> dict:
    """Build the model, run the method once; what each added to the resident memory, in bytes."""
    torch.set_grad_enabled(False)
    config = SHAPES[shape]()
    small = type(config)(**{**config.to_dict(), "layer_types": None, **TINY[shape]})  # the family's code imported and run once first
    cf.from_hf(transformers.AutoModelForCausalLM.from_config(small).eval())
    before = _rss()
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    model = cf.from_hf(hf)
    del hf
    params = _rss() - before
    task = random_pairs(batch, positions)  # (the curve's test split has as many examples)
    g = model.graph
    if method == "curve":
        scores = cf.EdgeScores(torch.randn(g.n_receivers, g.n_senders) * g.edge_mask, g, method="random")
        run = lambda: cf.faithfulness_curve(model, task, scores)  # noqa: E731
    elif method == "exact":
        from circuitfind.engine.patching import edge_effects
        from circuitfind.methods.common import prepare
        setup = prepare(model, task, "corrupted")
        receivers = [g.mlp_receiver(g.n_layers // 4), g.mlp_receiver(3 * g.n_layers // 4)]
        run = lambda: edge_effects(model, setup.batch.clean, setup.ablated, setup.per_mask, receivers=receivers,  # noqa: E731
                                   shared=setup.shared, max_masks=32)  # (exact's own, ExactConfig.max_masks)
    else:
        run = lambda: cf.score_edges(model, task, method, **({"steps": 5} if method == "eap-ig" else {}))  # noqa: E731
    _prepare(model, method, g)  # a small run of the same code first: its imports and first-call buffers
    base = _rss()
    Path("/proc/self/clear_refs").write_text("5")  # the peak so far (building the model's) forgotten: VmHWM = now
    t0 = time.perf_counter()
    run()
    seconds = time.perf_counter() - t0
    return {"params": params, "peak": max(_high_water() - base, 0), "seconds": seconds}


def _high_water() -> int:
    """Peak resident memory since the last reset (VmHWM), in bytes. (ru_maxrss keeps the building's peak: the
    conversion of a 1B model briefly holds two copies of its weights.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=4, help="(internal) shape method batch positions")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--positions", type=int, default=32)
    args = parser.parse_args()
    if args.child:
        shape, method, batch, positions = args.child
        print(json.dumps(child(shape, method, int(batch), int(positions))))
        return
    print(f"{'shape':<14}{'method':<8}{'b×p':>7}{'params pred':>13}{'meas':>9}{'work pred':>11}{'meas':>9}"
          f"{'ratio':>7}{'total pred':>12}{'meas':>9}{'ratio':>7}  load")
    for shape in args.shapes.split(","):
        for method in args.methods.split(","):
            batch = max(1, args.batch // 2) if shape == "llama-3.2-1b" else args.batch
            out = subprocess.run([sys.executable, __file__, "--child", shape, method, str(batch), str(args.positions)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{shape:<14}{method:<8} failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            m = json.loads(out.stdout.strip().splitlines()[-1])
            p = cf.plan(SHAPES[shape](), None, method, positions=args.positions, examples=batch)
            work_pred, work = p.working, m["peak"]
            if method == "exact":  # the setup (ablated outputs, logits) was made before the measured call
                work_pred -= p.parts["ablated outputs"]
            total_pred, total = work_pred + p.parts["parameters"], work + m["params"]
            mib = 2**20
            load = psutil.getloadavg()[0]
            print(f"{shape:<14}{method:<8}{batch:>3}×{args.positions:<3}{p.parts['parameters'] / mib:>13.0f}"
                  f"{m['params'] / mib:>9.0f}{work_pred / mib:>11.0f}{work / mib:>9.0f}{work_pred / max(work, 1):>7.2f}"
                  f"{total_pred / mib:>12.0f}{total / mib:>9.0f}{total_pred / total:>7.2f}  {load:.2f}", flush=True)
    print("MiB; 'work' is the method's peak over the loaded model, 'total' adds the parameters")


if __name__ == "__main__":
    main()
