"""The explorer's cost (#35): the server's work for one prompt — the prediction, its top-k and the token-by-layer
graph at the slider's lowest τ (`serve.explore.analyse`), and the same through HTTP (a POST to a running server,
JSON and all) — against a plain forward of the prompt, at GPT-2 small's shape (random weights, fp32, CPU),
the three in turns (medians of 7), in wall time and in the process's CPU time (which a loaded machine moves less).
Target: ≤ 3x."""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import gpt2_small_random  # noqa: E402

import circuitfind as cf  # noqa: E402
from circuitfind.serve import build  # noqa: E402
from circuitfind.serve.explore import TAU_MIN, analyse  # noqa: E402


def _server(model):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build(models=[model])[0], host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}/api/analyse"


def alternating(fns, repeat: int) -> list[tuple[float, float]]:
    """[(wall, cpu) median of each fn], all run in turns after one warm-up each (so a slow spell of the machine
    falls on every side alike)."""
    for fn in fns:
        fn()
    times = [([], []) for _ in fns]
    for _ in range(repeat):
        for fn, (wall, cpu) in zip(fns, times):
            w, c = time.perf_counter(), time.process_time()
            fn()
            wall.append(time.perf_counter() - w)
            cpu.append(time.process_time() - c)
    return [(statistics.median(wall), statistics.median(cpu)) for wall, cpu in times]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = cf.from_hf(gpt2_small_random())
    ids = torch.randint(0, 50257, (args.tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    prompt = "ids:" + ",".join(map(str, ids))
    tokens = torch.tensor([ids])

    def forward():
        with torch.no_grad():
            model(tokens)
    server, url = _server(model)
    body = json.dumps({"model": model.name, "prompt": prompt}).encode()

    def post():
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read())
    (f_wall, f_cpu), (w_wall, w_cpu), (h_wall, h_cpu) = alternating(
        [forward, lambda: analyse(model, prompt), post], args.repeat)
    n = len(post()["flow"]["edges"])
    server.should_exit = True
    print(f"GPT-2-small-shaped random model, {args.tokens} tokens, {torch.get_num_threads()} threads, the graph at "
          f"τ = {TAU_MIN} of {n} edges. Wall: forward {1e3 * f_wall:.1f} ms, the server's work {1e3 * w_wall:.1f} ms "
          f"({w_wall / f_wall:.2f}x), through HTTP {1e3 * h_wall:.1f} ms ({h_wall / f_wall:.2f}x). CPU: forward "
          f"{1e3 * f_cpu:.1f} ms, the server's work {1e3 * w_cpu:.1f} ms ({w_cpu / f_cpu:.2f}x), through HTTP "
          f"{1e3 * h_cpu:.1f} ms ({h_cpu / f_cpu:.2f}x)")


if __name__ == "__main__":
    main()
