"""The model zoo: short names → where a model comes from.

Hub entries resolve to a Hugging Face id (loaded from the local cache or the network).
Shipped toy models and compiled tracr models join this table with the zoo issue.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ZooEntry:
    name: str
    family: str
    source: str  # "hub" | "shipped" | "tracr"
    location: str  # hub id, or path inside the package
    description: str = ""


ZOO: dict[str, ZooEntry] = {e.name: e for e in [
    ZooEntry("gpt2", "gpt2", "hub", "openai-community/gpt2", "GPT-2 small, 124M"),
    ZooEntry("gpt2-medium", "gpt2", "hub", "openai-community/gpt2-medium", "GPT-2 medium, 355M"),
    ZooEntry("pythia-70m", "gpt_neox", "hub", "EleutherAI/pythia-70m", "Pythia 70M"),
    ZooEntry("pythia-160m", "gpt_neox", "hub", "EleutherAI/pythia-160m", "Pythia 160M"),
    ZooEntry("Qwen2.5-0.5B", "qwen2", "hub", "Qwen/Qwen2.5-0.5B", "Qwen2.5 0.5B (GQA, qkv bias)"),
    ZooEntry("Llama-3.2-1B", "llama", "hub", "meta-llama/Llama-3.2-1B", "Llama 3.2 1B (GQA, llama3 RoPE)"),
    ZooEntry("gemma-2-2b", "gemma2", "hub", "google/gemma-2-2b", "Gemma 2 2B (soft-capping, sliding window)"),
]}


def lookup(name: str) -> ZooEntry | None:
    return ZOO.get(name)


def load_entry(entry: ZooEntry, *, dtype: torch.dtype, device: torch.device):
    from circuitfind.models.loading import _from_pretrained, from_hf

    hf, tokenizer = _from_pretrained(entry.location, None)
    return from_hf(hf, tokenizer=tokenizer, name=entry.name, dtype=dtype, device=device)
