"""The explorer's cost (#35): the server's work for one prompt — the prediction, its top-k and the token-by-layer
graph at the slider's lowest τ (`serve.explore.analyse`), and the same through HTTP (a POST to a running server,
JSON and all) — against a plain forward of the prompt, at GPT-2 small's shape (random weights, fp32, CPU), each
pair in turns (medians of 7). Target: ≤ 3x."""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import gpt2_small_random, timeit_alternating  # noqa: E402

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    model = cf.from_hf(gpt2_small_random())
    ids = torch.randint(0, 50257, (args.tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    prompt = "ids:" + ",".join(map(str, ids))
    tokens = torch.tensor([ids])

    def forward():
        with torch.no_grad():
            model(tokens)
    t_forward, t_work = timeit_alternating(forward, lambda: analyse(model, prompt), repeat=args.repeat)
    server, url = _server(model)
    body = json.dumps({"model": model.name, "prompt": prompt}).encode()

    def post():
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read())
    t_forward2, t_http = timeit_alternating(forward, post, repeat=args.repeat)
    server.should_exit = True
    n = len(post()["flow"]["edges"])
    print(f"GPT-2-small-shaped random model, {args.tokens} tokens, {torch.get_num_threads()} threads: forward "
          f"{1e3 * t_forward:.1f} ms, the server's work {1e3 * t_work:.1f} ms ({t_work / t_forward:.2f}x); "
          f"through HTTP {1e3 * t_http:.1f} ms against a forward's {1e3 * t_forward2:.1f} ms "
          f"({t_http / t_forward2:.2f}x); the graph at τ = {TAU_MIN}: {n} edges")


if __name__ == "__main__":
    main()
