"""Shared benchmark helpers: a GPT-2-small-sized random model, timing, tensor-op counts and peak memory."""

from __future__ import annotations

import ctypes
import gc
import resource
import statistics
import subprocess
import sys
import time

import psutil
import torch
import transformers


def gpt2_small_random(seed: int = 0):
    """A random model with GPT-2 small's shape (12 layers, 12 heads, d_model 768, vocab 50257)."""
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def timeit(fn, repeat: int = 5, warmup: int = 2) -> float:
    """Median wall time of fn() in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def tensor_ops(fn) -> int:
    """How many tensor operations fn() dispatches (as a TorchDispatchMode sees them, views included).
    Unlike a time it is the same from run to run: for sub-second sweeps, whose time on this VM moves
    by a third between runs, a change's effect on the per-call overhead shows here."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))
    with Count():
        fn()
    return Count.n


def timeit_alternating(fn_a, fn_b, repeat: int = 7, warmup: int = 1) -> tuple[float, float]:
    """Median wall times of fn_a() and fn_b(), run in turns, so that slow spells of the machine (on a
    VM, fresh memory pages are sometimes many times dearer) fall on both alike."""
    for _ in range(warmup):
        fn_a(), fn_b()
    a, b = [], []
    for _ in range(repeat):
        for fn, times in ((fn_a, a), (fn_b, b)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b)


def peak_memory_in_process(script: str, role: str, args: list[str] = ()) -> int:
    """Peak resident memory one call adds, in bytes, measured in a fresh process: `python script
    --peak role [args]` builds its inputs, runs the role once under `report_peak` and prints the figure.
    A fresh process per role: no allocator state, thread pool or page cache carried between them."""
    out = subprocess.run([sys.executable, script, "--peak", role, *args], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def report_peak(fn) -> None:
    """Run fn once and print the peak resident memory it added (the child side of peak_memory_in_process).

    Free heap memory left by building the inputs is handed back to the system first, so fn's peak
    does not depend on how much of it fn happens to reuse."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = psutil.Process().memory_info().rss
    fn()
    print(max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base, 0))


__all__ = ["gpt2_small_random", "timeit", "timeit_alternating", "peak_memory_in_process", "report_peak"]
