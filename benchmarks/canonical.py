"""Canonical forward vs the Hugging Face forward (issues: foundation, #30).

A random model at GPT-2 small's width (12 layers, 12 heads, d_model 768, vocab 50257), batch 8 × 64
tokens, fp32, CPU: `--family gpt2` (default), `bloom` (ALiBi, embedding LayerNorm) or `mixtral` (8
experts of width 768, top 2, as each layer's MLP; its baseline is transformers' own eager experts
loop, `experts_implementation="eager"`). Prints time and peak-memory ratios measured in this one run
(times in turns, medians of 7; peak memory the median of 3 fresh processes per side, as in
engine.py; `--repeat N` and `--peak-runs N` change those counts, for a loaded machine). Targets: time
≤ 1.15x, peak memory ≤ 1.2x.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).parent))
from common import gpt2_small_random, peak_memory_in_process, report_peak, timeit_alternating  # noqa: E402

import circuitfind as cf  # noqa: E402


def random_model(family: str):
    """A random model of the family at GPT-2 small's width."""
    if family == "gpt2":
        return gpt2_small_random()
    torch.manual_seed(0)
    common = dict(vocab_size=50257, bos_token_id=0, eos_token_id=0)
    if family == "bloom":
        cfg = transformers.BloomConfig(n_layer=12, n_head=12, hidden_size=768, **common)
        return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    cfg = transformers.MixtralConfig(num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                                     hidden_size=768, intermediate_size=768, num_local_experts=8, num_experts_per_tok=2,
                                     max_position_embeddings=1024, **common)
    return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager",
                                                         experts_implementation="eager").eval()


def main():
    torch.set_grad_enabled(False)
    family = sys.argv[sys.argv.index("--family") + 1] if "--family" in sys.argv else "gpt2"
    hf = random_model(family)
    model = cf.from_hf(hf)
    tokens = torch.randint(0, 50257, (8, 64), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(tokens)
    run_hf = lambda: hf(input_ids=tokens, attention_mask=mask).logits  # noqa: E731
    run_cf = lambda: model(tokens, mask)  # noqa: E731
    if "--peak" in sys.argv:  # the child side of a memory measurement
        return report_peak({"hf": run_hf, "cf": run_cf}[sys.argv[sys.argv.index("--peak") + 1]])
    repeat, peak_runs = (int(sys.argv[sys.argv.index(f) + 1]) if f in sys.argv else n
                         for f, n in (("--repeat", 7), ("--peak-runs", 3)))
    m_hf, m_cf = (statistics.median(_peak(r, family) for _ in range(peak_runs)) for r in ("hf", "cf"))
    diff = (run_hf() - run_cf()).abs().max().item()
    t_hf, t_cf = timeit_alternating(run_hf, run_cf, repeat=repeat)
    print(f"family={family} threads={torch.get_num_threads()} max|Δlogits|={diff:.2e} "
          f"(times: medians of {repeat}; peaks: of {peak_runs} processes a side)")
    print(f"HF forward        {t_hf * 1e3:8.1f} ms   peak +{m_hf / 2**20:7.1f} MiB")
    print(f"canonical forward {t_cf * 1e3:8.1f} ms   peak +{m_cf / 2**20:7.1f} MiB")
    print(f"ratio time {t_cf / t_hf:.3f}x (target ≤ 1.15)   ratio memory {m_cf / m_hf:.3f}x (target ≤ 1.2)")


def _peak(role: str, family: str) -> int:
    return peak_memory_in_process(__file__, role, ["--family", family])


if __name__ == "__main__":
    main()
