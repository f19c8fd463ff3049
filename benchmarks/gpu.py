"""EAP and EAP-IG on one GPU against the plain `transformers` floor (issue 34), for a session lent a GPU.

A Llama-3.1-8B-shaped model (32 layers, d_model 4096, 32 heads, 8 kv heads, d_mlp 14336, vocab 128256) with
random bf16 weights built on the GPU, 8 random prompts × 128 tokens. Measured in this one run, in turns:
- the floor: 2 forwards (clean, corrupted; no gradients) + 1 backward of the clean one of the plain
  `transformers` model (gradients w.r.t. its input embeddings; the weights frozen, as attribution's);
- EAP (`cf.score_edges(..., "eap")`) and EAP-IG with 5 steps;
and each one's peak (torch.cuda.max_memory_allocated over what was allocated before it) beside the planner's
prediction (`cf.plan(config, ..., device="cuda", dtype=torch.bfloat16)`). Goals: EAP-IG at batch ≥ 8 on one
80 GB H100, EAP ≤ 1.5x the floor. CI never runs this; without CUDA it refuses (exit 2) before any work.

    python benchmarks/gpu.py                    # the issue's case
    python benchmarks/gpu.py --layers 4         # the same widths, 4 layers: a quick check of the script
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--positions", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False here); on CPU the issue's "
              "figures are benchmarks/plan.py's and benchmarks/scaling.py's", file=sys.stderr)
        return 2
    import transformers

    import circuitfind as cf
    from circuitfind.task import Example, Task

    config = transformers.LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=args.layers,
                                      num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                                      max_position_embeddings=131072, rope_theta=5e5, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    with torch.device("cuda"):
        hf = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval().requires_grad_(False)
    model = cf.from_hf(hf, dtype=torch.bfloat16, device="cuda")
    torch.cuda.empty_cache()
    length = args.positions

    class RandomPairs(Task):
        name, metric = "random-pairs", "logit-diff"

        def example(self, rng, words):
            a, b = words.random_tokens(rng, length), words.random_tokens(rng, length)
            return Example(clean=a, corrupt=b, correct=a[0], wrong=b[0] if b[0] != a[0] else a[0] + 1)
    task = RandomPairs(n=args.batch, seed=0)
    batch = task.batch(model)
    clean, corrupt = batch.clean.tokens.cuda(), batch.corrupt.tokens.cuda()

    def floor():
        with torch.no_grad():
            hf(input_ids=corrupt)
        with torch.enable_grad():
            embeds = hf.get_input_embeddings()(clean).detach().requires_grad_(True)
            hf(inputs_embeds=embeds).logits[:, -1].float().sum().backward()

    runs = {"floor (2 fwd + 1 bwd)": floor, "eap": lambda: cf.score_edges(model, task, "eap"),
            "eap-ig (5 steps)": lambda: cf.score_edges(model, task, "eap-ig", steps=5)}
    times = {k: [] for k in runs}
    peaks = {}
    for name, fn in runs.items():  # a warm-up of each, and its peak
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        peaks[name] = torch.cuda.max_memory_allocated() - base
    for _ in range(args.repeat):  # in turns
        for name, fn in runs.items():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    plans = {"eap": cf.plan(config, None, "eap", positions=length, examples=args.batch, device="cuda",
                            dtype=torch.bfloat16),
             "eap-ig (5 steps)": cf.plan(config, None, "eap-ig", positions=length, examples=args.batch,
                                         device="cuda", dtype=torch.bfloat16)}
    gib = 2**30
    print(f"{torch.cuda.get_device_name()}: Llama-3.1-8B shape, {args.layers} layers, bf16, "
          f"{args.batch} prompts × {length} tokens; weights {torch.cuda.memory_allocated() / gib:.1f} GiB "
          f"(transformers' and circuitfind's copies); medians of {args.repeat}")
    t_floor = statistics.median(times["floor (2 fwd + 1 bwd)"])
    for name in runs:
        t = statistics.median(times[name])
        planned = f"   planned {plans[name].working / gib:6.2f} GiB" if name in plans else ""
        print(f"{name:<22} {t:8.3f} s  {t / t_floor:5.2f}x the floor   peak +{peaks[name] / gib:6.2f} GiB{planned}")
    print(f"goals: EAP ≤ 1.5x the floor; EAP-IG at batch {args.batch} on this GPU "
          f"(total {torch.cuda.get_device_properties(0).total_memory / gib:.0f} GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
