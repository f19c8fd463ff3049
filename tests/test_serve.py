"""`circuitfind serve`: the explorer's numbers against the Python calls they mirror, its HTTP answers to bad input
and to requests without the token, and the page in headless Chromium (as tests/test_report.py drives it)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import circuitfind as cf
from circuitfind import inspect as ci
from circuitfind.cli import main
from circuitfind.errors import ConfigError
from circuitfind.serve import access, build, explore
from circuitfind.serve.attends import attends
from tests.conftest import tiny_model
from tests.test_report import HOSTILE, _browser, _hostile_model, _launch

PROMPT = "When Mary and John went to the store, John gave a drink to"
LONG = ("When Mary and John went to the store , John gave a drink to Mary . Then Anna and Paul went to the "
        "garden , and Paul gave a book to")  # 32 tokens of toy-lm
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "images"


@pytest.fixture(scope="module")
def toy():
    return cf.load_model("toy-lm")


# ---------------------------------------------------------------- the numbers, in Python

def _pattern_from_terms(model, tokens, layer, head, dst):
    """The attention row of (layer, head) at dst rebuilt from the bilinear terms alone: softmax over the keys of the
    terms' totals (soft-capped where the family caps)."""
    seen = model.allowed(torch.ones_like(tokens), layer).expand(1, model.cfg.n_heads, -1, -1)[0, head, dst, : dst + 1]
    totals = torch.full((dst + 1,), float("-inf"), dtype=torch.float64)
    for src in seen.nonzero()[:, 0].tolist():
        totals[src] = attends(model, tokens, layer, head, dst, src)["total"]
    cap = model.cfg.attn_softcap
    if cap is not None:
        totals = torch.where(seen, torch.tanh(totals / cap) * cap, totals)
    return totals.softmax(-1)


@pytest.mark.parametrize("family", ["gpt2", "llama", "bloom", "gemma2"])  # learned, rotary + GQA, ALiBi, soft-cap
def test_attention_terms_sum_to_the_models_score(family):
    """The terms [sender into q, sender into k] sum to the forward's q·k score, and the scores they give every key
    reproduce the model's own attention pattern (hook_pattern) after the softmax."""
    model = tiny_model(family)
    tokens = torch.randint(3, 90, (1, 7), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    for layer, head, dst in ((0, 0, 6), (model.cfg.n_layers - 1, model.cfg.n_heads - 1, 5)):
        a = attends(model, tokens, layer, head, dst, 3)
        terms = torch.tensor(a["terms"], dtype=torch.float64)
        assert terms.shape == (model.graph.senders_before(layer) + 1,) * 2
        assert a["total"] == pytest.approx(a["score"], abs=1e-9), (layer, head)
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0, head, dst, : dst + 1]
        torch.testing.assert_close(_pattern_from_terms(model, tokens, layer, head, dst), pattern.double(),
                                   atol=1e-9, rtol=1e-7)


def test_attention_terms_on_toy_lm_and_what_is_refused(toy):
    tokens = explore.prompt_tokens(toy, PROMPT)
    a = attends(toy, tokens, 2, 1, -1)
    assert a["src"] == max(range(len(a["pattern"])), key=a["pattern"].__getitem__)  # default: the key it attends most
    assert a["total"] == pytest.approx(a["score"], abs=1e-4) and a["senders"][-1] == "bias"
    with pytest.raises(ConfigError, match="does not attend to position 5"):
        attends(toy, tokens, 0, 0, 2, 5)
    with pytest.raises(ConfigError, match="qk-norm"):
        attends(tiny_model("qwen3"), torch.tensor([[3, 4, 5]]), 0, 0, 2)


def test_states_show_the_logit_lens_and_the_graph_is_ci_flow(toy):
    d = explore.analyse(toy, PROMPT)
    logits = toy(explore.prompt_tokens(toy, PROMPT))[0, -1]
    assert d["top"][0][0] == toy.tokenizer.decode([int(logits.argmax())])
    assert len(d["flow"]["edges"]) == len(ci.flow(toy, PROMPT, tau=explore.TAU_MIN).edges)
    for row, token in ((0, 1), (4, 3), (8, -1)):
        lens = ci.logit_lens(toy, PROMPT, f"resid:{row // 2}", 5)[token]
        s = explore.state(toy, PROMPT, row, token)
        assert [w for w, _ in s["promoted"]] == [w for w, _ in lens.promoted]
        assert [w for w, _ in s["suppressed"]] == [w for w, _ in lens.suppressed]
    with pytest.raises(ConfigError, match="not a row"):
        explore.state(toy, PROMPT, 99, 0)


def test_neurons_sum_to_the_mlps_direct_effect(toy):
    """Over every neuron, the contributions add up to the MLP's direct effect on the predicted token (its output,
    bias aside, through the final norm frozen), as ci.direct_logits computes it."""
    from circuitfind.types import Inputs

    tokens = explore.prompt_tokens(toy, PROMPT)
    n = explore.neurons(toy, PROMPT, 1, n=toy.cfg.d_mlp)
    top = int(toy(tokens)[0, -1].argmax())
    per_node, _ = ci.direct_logits(toy, Inputs.of(tokens))
    direct = float(per_node[toy.graph.mlp_sender(1), 0, top])
    assert sum(r["contribution"] for r in n["neurons"]) == pytest.approx(direct, abs=2e-3)
    assert abs(n["neurons"][0]["contribution"]) >= abs(n["neurons"][-1]["contribution"])


@pytest.fixture(scope="module")
def sae(toy, tmp_path_factory):
    """An SAE file on toy-lm's stream entering layer 3: 64 random latents, latent 0 decoding to the direction of
    " store" (so steering it is steering resid:3, or m2, along that direction)."""
    from safetensors.torch import save_file

    d, n = toy.cfg.d_model, 64
    g = torch.Generator().manual_seed(0)
    W_dec = torch.randn(n, d, generator=g)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    W_dec[0] = ci.token_direction(toy, " store")
    path = tmp_path_factory.mktemp("sae") / "toy-lm-resid3.safetensors"
    save_file({"W_enc": torch.randn(d, n, generator=g) / d**0.5, "b_enc": torch.zeros(n), "W_dec": W_dec,
               "b_dec": torch.zeros(d)}, str(path), metadata={"hook": "blocks.3.hook_resid_pre"})
    return path


def _intervened(model, iv, prompt=PROMPT, n=5, k=5):
    """Python's answer for an intervention: the new top-1 (a forward under its hooks) and ci.compare's generation;
    and the top-k probabilities."""
    from circuitfind.inspect.interventions import hooks_for

    with model.hooks(hooks_for(model, [iv])):
        after = model(model.to_tokens(prompt))[0, -1]
    probs = after.softmax(-1).topk(k).values.tolist()
    return model.tokenizer.decode([int(after.argmax())]), ci.compare(model, prompt, [iv], n)["intervened"], probs


def _cases(toy, sae):
    """(the page's fields, the ci.Intervention they stand for): every kind the panel offers."""
    _, cache = toy.run_with_cache(toy.to_tokens(PROMPT), names_filter=[sae.hook])
    top = int(sae.encode(cache[sae.hook])[0, -1].argmax())  # the latent most active at the last token
    return [({"node": "m3", "kind": "scale", "value": "-1"}, ci.Intervention("m3", "scale", -1.0)),
            ({"node": "a2.h1", "kind": "steer", "value": "40", "toward": " store", "away": " Mary"},
             ci.Intervention("a2.h1", "steer", 40 * ci.token_direction(toy, " store", " Mary"))),
            ({"node": "m2", "kind": "steer", "value": "30", "toward": " store"},
             ci.Intervention("m2", "steer", 30 * ci.token_direction(toy, " store"))),
            ({"node": "m1.n212", "kind": "steer", "value": "40"}, ci.Intervention("m1.n212", "steer", 40.0)),
            ({"node": f"sae:{top}", "kind": "zero"}, ci.Intervention(f"sae:{top}", "zero", sae=sae)),
            ({"node": f"sae:{top}", "kind": "scale", "value": "3"},
             ci.Intervention(f"sae:{top}", "scale", 3.0, sae=sae)),
            ({"node": "sae:0", "kind": "steer", "value": "30"}, ci.Intervention("sae:0", "steer", 30.0, sae=sae))]


def test_interventions_match_ci_compare(toy, sae):
    sae = ci.SAE.load(sae, model=toy)
    for fields, iv in _cases(toy, sae):
        r = explore.intervene(toy, PROMPT, new_tokens=5, sae=sae, **fields)
        top1, generated, probs = _intervened(toy, iv)
        assert (r["top_after"][0][0], r["intervened"]) == (top1, generated), fields
        assert [p for _, p, _ in r["top_after"]] == pytest.approx(probs, abs=1e-5), fields
        assert r["top_after"] != r["top_before"], fields  # (each changes the prediction's distribution)
    # latent 0 decodes to the direction of " store" at the stream entering layer 3: steering it is steering resid:3
    # (and m2, which writes just before) by the same amount along that direction
    latent = explore.intervene(toy, PROMPT, "sae:0", "steer", "30", 5, sae=sae)
    for node in ("resid:3", "m2"):
        r = explore.intervene(toy, PROMPT, node, "steer", "30", 5, toward=" store")
        assert r["intervened"] == latent["intervened"] == " store store store store store"
        for (w, p, _), (w2, p2, _) in zip(r["top_after"], latent["top_after"]):
            assert w == w2 and p == pytest.approx(p2, abs=1e-4)
    for args, kw, match in ((("input", "zero"), {}, "intervenes on a head"), (("m9", "zero"), {}, "4 layers"),
                            (("m1", "flip"), {}, "'zero', 'scale' or 'steer'"),
                            (("m1", "steer", "nan"), {"toward": " store"}, "finite number"),
                            (("m1", "scale", "inf"), {}, "finite number"),
                            (("m1", "steer", "x"), {}, "must be a number"),
                            (("m1", "steer", "2"), {}, "give the token"),
                            (("a0.h0", "steer", "2"), {"toward": "zzzqqq"}, "not in the vocabulary"),
                            (("resid:2", "zero"), {}, "steered, not zeroed"),
                            (("sae:3", "zero"), {}, "no SAE is loaded for toy-lm"),
                            (("sae:64", "zero"), {"sae": sae}, "between 0 and 63"),
                            (("sae:0", "steer", "-inf"), {"sae": sae}, "finite number")):
        with pytest.raises(ConfigError, match=match):
            explore.intervene(toy, PROMPT, *args, **kw)


def test_examples_and_patchscope_are_ci_s(toy):
    r = explore.examples(toy, "m1.n212", "ioi", n=20)
    top = ci.top_activations(toy, cf.load_task("ioi", n=20, seed=0), "m1.n212", k=5)
    assert [e["context"] for e in r["examples"]] == [a.context for a in top] and len(top) == 5
    said = {}
    for source, token in (("resid:2", -1), ("resid_mid:1", 4), ("a2.h1", -1), ("m0", 3), ("input", 2)):
        p = explore.patchscope(toy, PROMPT, source, token)
        said[source] = p["said"]
        assert p["said"] == ci.patchscope(toy, PROMPT, source, source_position=token), source
    assert said["resid:2"] == ci.patchscope(toy, PROMPT, 1)  # the stream entering layer 2 is the one after layer 1
    assert len(set(said.values())) > 2  # (different states read differently)
    assert explore.state_name(toy, 3) == "resid_mid:1" and explore.state_name(toy, 8) == "resid:4"
    for source, match in (("m1.n5", "is a neuron"), ("resid_mid:4", "resid_mid:L with L in 0..3"),
                          ("", "needs a source"), ("a9.h0", "4 layers")):
        with pytest.raises(ConfigError, match=match):
            explore.patchscope(toy, PROMPT, source)
    with pytest.raises(ConfigError, match="not a row"):
        explore.state_name(toy, 9)
    with pytest.raises(ConfigError, match="1..200"):
        explore.examples(toy, "m1.n2", "ioi", n=0)


def test_bad_prompts_are_refused_by_name(toy):
    for prompt, match in (("", "empty"), ("   ", "empty"), (" x" * 80, "past toy-lm's context of 64")):
        with pytest.raises(ConfigError, match=match):
            explore.analyse(toy, prompt)


def test_access_rules():
    assert access("127.0.0.1", None) is None and access("localhost", None) is None and access("::1", None) is None
    assert access("127.0.0.1", "s3cret") == "s3cret" and access("0.0.0.0", "s3cret") == "s3cret"
    generated = access("0.0.0.0", None)
    assert generated and len(generated) >= 24 and access("192.168.1.5", None) != generated
    with pytest.raises(ConfigError, match="--token is empty"):
        access("0.0.0.0", " ")
    assert main(["serve", "--host", "0.0.0.0", "--token", ""]) == 2
    assert main(["serve", "--runs", "/nonexistent/runs"]) == 2
    assert main(["serve", "--model", "no-such-model-anywhere"]) == 2  # (loaded before the server starts)



def test_sae_arguments_and_an_sae_that_does_not_fit(toy, sae, tmp_path, capsys):
    from circuitfind.serve import sae_arguments

    assert sae_arguments([f"toy-lm={sae}"], None) == {"toy-lm": str(sae)}
    assert sae_arguments([str(sae)], ["toy-lm"]) == {"toy-lm": str(sae)}
    for given, models, match in (([str(sae)], None, "say which model"), ([str(sae)], ["a", "b"], "say which model"),
                                 ([f"a={sae}", f"a={sae}"], None, "two SAEs for 'a'")):
        with pytest.raises(ConfigError, match=match):
            sae_arguments(given, models)
    assert main(["serve", "--sae", str(sae)]) == 2 and "say which model" in capsys.readouterr().err
    assert main(["serve", "--sae", f"toy-lm={tmp_path / 'none.safetensors'}"]) == 2
    assert "no SAE file" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="does not offer"):
        build(models=[toy], saes={"gpt-17": sae})
    wide = ci.SAE.load(sae)
    for other, match in ((ci.SAE(wide.W_enc, wide.b_enc, wide.W_dec, wide.b_dec, "blocks.9.hook_resid_pre"),
                          "not a hook point of 'toy-lm'"),
                         (ci.SAE(wide.W_enc[:64], wide.b_enc, wide.W_dec[:, :64], wide.b_dec[:64], wide.hook),
                          "reads width 64")):
        with pytest.raises(ConfigError, match=match):
            build(models=[toy], saes={"toy-lm": other})


# ---------------------------------------------------------------- over HTTP

def _free_port(host="127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _ipv6() -> bool:
    """Whether this machine can bind the IPv6 loopback address."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@contextmanager
def running(app, host="127.0.0.1"):
    import uvicorn

    port = _free_port("::1" if host == "::1" else "127.0.0.1")
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.02)
    try:
        yield f"http://[::1]:{port}" if host == "::1" else f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _request(url, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, text = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, {"error": text.decode()}


@pytest.fixture(scope="module")
def runs(toy, tmp_path_factory):
    """Two run directories of toy-lm (IOI; EAP and EAP-IG), without report pages: enough for the runs view."""
    root = tmp_path_factory.mktemp("runs")
    for method in ("eap", "eap-ig"):
        cf.discover(toy, "ioi", method, n=8, out=root / f"ioi-{method}", quiet=True, report=False)
    return root


@pytest.fixture(scope="module")
def server(toy, runs, sae):
    # (the second model has a token that is markup, and no SAE)
    app, _ = build(models=[toy, _hostile_model()], runs=runs, saes={"toy-lm": sae})
    with running(app) as url:
        yield url


def test_bad_input_is_answered_and_the_server_stays_up(server):
    bad = [("analyse", {"model": "gpt-17", "prompt": PROMPT}, "unknown model 'gpt-17'"),
           ("analyse", {"model": "toy-lm", "prompt": ""}, "prompt is empty"),
           ("analyse", {"model": "toy-lm", "prompt": " x" * 80}, "past toy-lm's context"),
           ("head", {"model": "toy-lm", "prompt": PROMPT, "node": "a7.h0"}, "the model has 4 layers"),
           ("neurons", {"model": "toy-lm", "prompt": PROMPT, "node": "m1", "token": 99}, "outside the prompt"),
           ("state", {"model": "toy-lm", "prompt": PROMPT, "row": "x", "token": 0}, "row must be an integer"),
           ("contrast", {"model": "toy-lm", "prompt": PROMPT, "a": "zzzqqq"}, "not in the vocabulary"),
           ("intervene", {"model": "toy-lm", "prompt": PROMPT, "node": "sae:64"}, "between 0 and 63"),
           ("intervene", {"model": "hostile-gpt2", "prompt": "a b", "node": "sae:1"}, "no SAE is loaded"),
           ("intervene", {"model": "toy-lm", "prompt": PROMPT, "node": "m1", "kind": "steer", "value": "Infinity",
                          "toward": " store"}, "finite number"),
           ("patchscope", {"model": "toy-lm", "prompt": PROMPT, "source": "m0.n3"}, "is a neuron"),
           ("nothing", {}, "no operation 'nothing'")]
    for op, body, match in bad:
        status, answer = _request(f"{server}/api/{op}", body)
        assert status == 400 and match in answer["error"], (op, answer)
    status, _ = _request(f"{server}/api/analyse", {"model": "toy-lm", "prompt": PROMPT})
    assert status == 200
    req = urllib.request.Request(f"{server}/api/analyse", data=b"{not json", headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 400 and "not JSON" in e.value.read().decode()
    status, answer = _request(f"{server}/api/runs?name=../../etc")
    assert status == 400 and "no run named" in answer["error"]


def test_an_unexpected_failure_is_answered_and_the_server_stays_up(server, monkeypatch):
    def broken(*args, **kw):
        raise RuntimeError("a bug")
    monkeypatch.setattr(explore, "analyse", broken)
    status, answer = _request(f"{server}/api/analyse", {"model": "toy-lm", "prompt": PROMPT})
    assert status == 500 and "RuntimeError: a bug" in answer["error"] and "still running" in answer["error"]
    monkeypatch.undo()
    assert _request(f"{server}/api/analyse", {"model": "toy-lm", "prompt": PROMPT})[0] == 200


def test_concurrent_requests_are_queued_not_lost(server, toy):
    answers = []

    def ask(i):
        answers.append(_request(f"{server}/api/analyse", {"model": "toy-lm", "prompt": f"{PROMPT} Mary"[: 20 + i]}))
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 6 and all(status == 200 for status, _ in answers)


def test_loopback_refuses_other_host_names(server):
    for host in ("attacker.example", "attacker.example:8765", "127.0.0.1.attacker.example", "[::2]:8765"):
        status, answer = _request(f"{server}/api/models", headers={"Host": host})
        assert status == 400 and "addressed to this machine" in answer["error"], host  # (no DNS rebinding)
    port = server.rsplit(":", 1)[1]
    for host in (f"[::1]:{port}", "[::1]", f"localhost:{port}", f"127.0.0.1:{port}"):
        status, answer = _request(f"{server}/api/models", headers={"Host": host})
        assert status == 200 and "toy-lm" in answer["models"], host


def test_ipv6_loopback_is_loopback(toy):
    """::1 and [::1] bind without a token, as 127.0.0.1 and localhost do; a Host header [::1]:PORT is this machine.
    The rules are checked as functions (and the bind decision without binding); where the machine has IPv6, a
    server on ::1 answers the page's requests too."""
    from circuitfind.serve import bare, is_loopback, loopback_host
    from circuitfind.serve.app import TokenGate

    for host in ("127.0.0.1", "localhost", "LOCALHOST", "::1", "[::1]", "127.0.0.2", "0:0:0:0:0:0:0:1"):
        assert is_loopback(host) and access(host, None) is None, host
    for host in ("0.0.0.0", "::", "[::]", "192.168.1.5", "example.com", "[::2]", "", "[::1"):
        assert not is_loopback(host), host
        assert access(host, None), host  # (a generated token)
    assert bare("[::1]") == "::1" and bare("127.0.0.1") == "127.0.0.1"
    for header in ("[::1]:8765", "[::1]", "127.0.0.1:8765", "localhost", "localhost:80", "[0:0:0:0:0:0:0:1]:9"):
        assert loopback_host(header), header
    for header in ("attacker.example", "[::1]:x", "[::1", "::1:80", "::1", "127.0.0.1.evil.com", "", None,
                   "[::2]:80", "localhost:80:90", "[::1]junk", "127.0.0.1:"):
        assert not loopback_host(header), header
    for host in ("::1", "[::1]"):  # the bind decision: no token, the app answers loopback hosts only
        app, token = build(models=[toy], host=host)
        assert token is None and not isinstance(app, TokenGate)
    app, token = build(models=[toy], host="::")
    assert token and isinstance(app, TokenGate)
    if _ipv6():
        app, _ = build(models=[toy], host="[::1]")
        with running(app, host="::1") as url:
            status, answer = _request(f"{url}/api/models")  # (urllib sends Host: [::1]:PORT)
            assert status == 200 and "toy-lm" in answer["models"]
            assert _request(f"{url}/api/analyse", {"model": "toy-lm", "prompt": PROMPT})[0] == 200
            assert _request(f"{url}/api/models", headers={"Host": "attacker.example"})[0] == 400


def test_a_server_off_loopback_refuses_requests_without_its_token(toy):
    app, token = build(models=[toy], host="0.0.0.0")
    assert token
    with running(app, host="0.0.0.0") as url:
        for path in ("/", "/api/models", "/assets/draw.js"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(url + path)
            assert e.value.code == 403 and "needs its token" in e.value.read().decode()
        status, _ = _request(f"{url}/api/analyse", {"model": "toy-lm", "prompt": PROMPT}, {"X-Circuitfind-Token": "no"})
        assert status == 403
        status, answer = _request(f"{url}/api/models", headers={"X-Circuitfind-Token": token})
        assert status == 200 and "toy-lm" in answer["models"]
        with urllib.request.urlopen(f"{url}/?token={token}") as r:  # the page, and its cookie for what follows
            assert r.status == 200 and f"circuitfind_token={token}" in r.headers["set-cookie"]


def test_the_command_off_loopback_prints_a_generated_token_and_requires_it():
    import re
    import subprocess
    import sys

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "circuitfind.cli", "serve", "--host", "0.0.0.0", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        token = re.search(r"\?token=([\w-]+)", line).group(1)
        for _ in range(100):  # (the address is printed just before the server binds)
            try:
                status, _ = _request(f"http://127.0.0.1:{port}/api/models")
                break
            except urllib.error.URLError:
                time.sleep(0.1)
        assert status == 403
        assert _request(f"http://127.0.0.1:{port}/api/models", headers={"X-Circuitfind-Token": token})[0] == 200
    finally:
        proc.terminate()
        proc.wait(10)


def test_runs_and_their_overlap(server, runs):
    status, listed = _request(f"{server}/api/runs")
    names = sorted(r["name"] for r in listed["runs"])
    assert status == 200 and names == ["ioi-eap", "ioi-eap-ig"]
    a, b = (cf.Circuit.load(runs / n / "circuit.json") for n in names)
    _, o = _request(f"{server}/api/runs?a=ioi-eap&b=ioi-eap-ig")
    assert o["shared"] == int((a.mask & b.mask).sum()) and o["iou"] == pytest.approx(
        int((a.mask & b.mask).sum()) / int((a.mask | b.mask).sum()))
    _, shown = _request(f"{server}/api/runs?name=ioi-eap")
    assert shown["n_edges"] == a.n_edges and shown["summary"]["rows"][0][2] == "eap"


def test_runs_of_a_sweep_store(tmp_path):
    from circuitfind.serve.runs import Runs

    store = tmp_path / "sweep.sqlite"
    cf.sweep(models=["toy-lm"], tasks=["ioi"], methods=["eap"], store=store, n=8, quiet=True)
    runs = Runs(store=store)
    listed = runs.list()
    assert len(listed) == 1 and listed[0]["name"].startswith("job:") and listed[0]["method"] == "eap"
    shown = runs.show(listed[0]["name"])
    assert shown["n_edges"] == listed[0]["n_edges"] and shown["drawing"]["senders"][0] == "input"
    with pytest.raises(ConfigError, match="no sweep store"):
        Runs(store=tmp_path / "none.sqlite")
    with pytest.raises(ConfigError, match="not both"):
        build(runs=tmp_path, sweep=store)


# ---------------------------------------------------------------- in a real browser

@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    sync_playwright = _browser()
    with sync_playwright() as p:
        context = _launch(p, tmp_path_factory.mktemp("chromium"))
        try:
            yield context
        finally:
            context.close()


@contextmanager
def page_of(browser, url):
    """A page at url that records script errors and dialogs (a prompt's markup must never run)."""
    page = browser.new_page()
    page.errors, page.dialogs = [], []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    page.goto(url)
    page.wait_for_selector("#model option", state="attached")
    try:
        yield page
    finally:
        assert not page.errors, page.errors
        assert not page.dialogs, "markup ran as script"
        page.close()


def _run(page, prompt):
    """Type a prompt, click Run, wait for its graph; → the seconds from the click to the graph on screen."""
    page.fill("#prompt", prompt)
    page.evaluate("document.getElementById('flow').removeAttribute('data-ms')")
    t0 = time.perf_counter()
    page.click("#run")
    page.wait_for_selector("#flow[data-ms]", timeout=30_000)
    return time.perf_counter() - t0


def test_prompt_view_in_a_real_browser(server, browser, toy, tmp_path):
    with page_of(browser, server) as page:
        assert explore.prompt_tokens(toy, LONG).shape[-1] == 32
        _run(page, LONG)  # (the first run warms the model's caches up)
        seconds = _run(page, LONG)
        in_page = float(page.get_attribute("#flow", "data-ms")) / 1e3
        print(f"\n32-token prompt on toy-lm: graph on screen {seconds:.3f} s after the click ({in_page:.3f} s in the page)")
        assert seconds <= 1.0
        lines = page.locator("#flow line.flow-edge")
        for tau in ("0.04", "0.1", "0.3", "0.02"):  # the slider re-prunes exactly as ci.flow prunes at τ
            page.locator("#tau").fill(tau)
            assert lines.count() == len(ci.flow(toy, LONG, tau=float(tau)).edges) > 0, tau
            assert int(page.get_attribute("#flow-count", "data-edges")) == lines.count()
        top = page.locator("table.topk td").first.inner_text()
        assert json.loads(top) == toy.tokenizer.decode([int(toy(toy.to_tokens(LONG))[0, -1].argmax())])

        state = page.locator("#flow .flow-node[data-state^='4,']").first  # a state entering layer 2
        row, token = map(int, state.get_attribute("data-state").split(","))
        state.click()
        page.wait_for_selector("#detail td.lens-up")
        lens = ci.logit_lens(toy, LONG, f"resid:{row // 2}", 5)[token]
        assert page.locator("#detail td.lens-up").all_inner_texts() == [w for w, _ in lens.promoted]
        assert page.locator("#detail td.lens-down").all_inner_texts() == [w for w, _ in lens.suppressed]
        page.click("#patchscope")
        page.wait_for_function("document.getElementById('patchscope-out').textContent.length > 0")
        said = ci.patchscope(toy, LONG, row // 2 - 1, source_position=token)
        assert json.dumps(said) in page.inner_text("#patchscope-out")
        mid = page.locator("#flow .flow-node[data-state^='3,']").first  # a state after layer 1's attention
        token = int(mid.get_attribute("data-state").split(",")[1])
        mid.click()
        page.wait_for_selector("#detail td.lens-up")
        page.click("#patchscope")
        page.wait_for_function("document.getElementById('patchscope-out').textContent.length > 0")
        said = ci.patchscope(toy, LONG, "resid_mid:1", source_position=token)
        assert json.dumps(said) in page.inner_text("#patchscope-out")
        assert "after layer 1's attention" in page.inner_text("#patchscope-out")

        page.locator("#flow line.flow-edge[data-kind='ffn']").first.dispatch_event("click")
        page.wait_for_selector("table.neurons td")
        assert page.locator("table.neurons tr").count() == 11
        page.locator("table.neurons .neuron-pick").first.click()
        page.wait_for_selector("#examples td.example")
        neuron = page.locator("table.neurons .neuron-pick").first.inner_text()
        top = ci.top_activations(toy, cf.load_task("ioi", n=40, seed=0), neuron, k=5)
        assert page.locator("#examples td.example").all_inner_texts() == [a.context for a in top]
        page.locator("#flow line.flow-edge[data-kind='attn']").first.dispatch_event("click")
        page.locator("#detail .head-pick").first.click()
        page.wait_for_selector("#attn-score")
        score = float(page.get_attribute("#attn-score", "data-value"))
        terms = [float(v) for v in page.locator("table.terms td.num").evaluate_all("cs => cs.map(c => c.dataset.value)")]
        assert len(terms) == 16 and sum(terms) == pytest.approx(score, abs=1e-4)

        for name, message in (("a9.h9", "the model has 4 layers"), ("m1.zz", "not a node name")):
            page.fill("#node", name)
            page.click("#show-node")
            page.wait_for_function("document.getElementById('error').textContent.length > 0")
            assert message in page.inner_text("#error")
        for prompt, message in (("", "the prompt is empty"), (" x" * 80, "past toy-lm's context of 64")):
            page.fill("#prompt", prompt)
            page.click("#run")
            page.wait_for_function("document.getElementById('error').textContent.length > 0")
            assert message in page.inner_text("#error")
        _run(page, HOSTILE)  # markup in a prompt: shown as text, never run
        assert HOSTILE in page.inner_text("#prompt-shown") and page.locator("#prediction script").count() == 0
        page.select_option("#model", "hostile-gpt2")
        _run(page, f"{HOSTILE} a b c")  # a model whose vocabulary holds the markup as one token: drawn as text
        assert page.locator("#flow text.flow-token").all_text_contents()[1] == HOSTILE
        page.select_option("#model", "toy-lm")

        page.set_viewport_size({"width": 1400, "height": 760})
        _run(page, PROMPT)
        page.fill("#node", "a2.h1")
        page.click("#show-node")
        page.wait_for_selector("#attn-score")
        # the README's picture: CIRCUITFIND_SCREENSHOTS=1 writes it into docs/images/
        shot = SHOTS / "explorer.png" if os.environ.get("CIRCUITFIND_SCREENSHOTS") == "1" else tmp_path / "explorer.png"
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 20_000
        page.click("#head-patchscope")  # the head's output at its query token, read by a Patchscope
        page.wait_for_function("document.getElementById('head-patchscope-out').textContent.length > 0")
        said = ci.patchscope(toy, PROMPT, "a2.h1", source_position=-1)
        assert page.inner_text("#head-patchscope-out").endswith(f"the model says {json.dumps(said)}")



def test_contrast_and_intervention_in_a_real_browser(server, browser, toy):
    with page_of(browser, server) as page:
        page.fill("#prompt", PROMPT)
        page.click(".tab[data-view='contrast']")
        page.click("#why-run")
        page.wait_for_selector("#why-table tbody tr")
        why = ci.why(toy, PROMPT)
        rows = page.locator("#why-table tbody tr")
        assert rows.count() == len(why.nodes) and rows.first.locator("td").first.inner_text() == why.nodes[0].node
        page.click("#why-table th[data-key='direct']")
        best = max(why.nodes, key=lambda c: abs(c.direct))
        assert rows.first.locator("td").first.inner_text() == best.node
        page.click("#why-table th[data-key='node']")
        assert rows.first.locator("td").first.inner_text() == sorted(c.node for c in why.nodes)[0]

        page.fill("#iv-node", "m3")
        page.select_option("#iv-kind", "scale")
        page.fill("#iv-value", "-1")
        page.fill("#iv-tokens", "5")
        page.click("#iv-run")
        page.wait_for_selector("#iv-after td.next")
        r = explore.intervene(toy, PROMPT, "m3", "scale", -1.0, new_tokens=5)
        assert page.locator("#iv-after td.next").first.inner_text() == r["top_after"][0][0]
        assert page.inner_text("#iv-after .generation") == r["intervened"].strip()


def _intervene_in_page(page, fields):
    """Fill the panel as a researcher would and apply; → (the new top-1, the intervened generation) shown."""
    page.evaluate("['iv-toward', 'iv-away'].forEach(id => { document.getElementById(id).value = ''; })")
    page.fill("#iv-node", fields["node"])
    page.select_option("#iv-kind", fields["kind"])
    for key in ("value", "toward", "away"):
        if key in fields:
            page.fill(f"#iv-{key}", fields[key])
    page.evaluate("document.getElementById('iv-out').replaceChildren()")
    page.click("#iv-run")
    page.wait_for_function("document.querySelector('#iv-after td.next') || "
                           "document.getElementById('error').textContent")
    assert not page.inner_text("#error"), page.inner_text("#error")
    probs = page.locator("#iv-after td.num").evaluate_all("cs => cs.map(c => +c.dataset.value)")
    return page.locator("#iv-after td.next").first.inner_text(), page.inner_text("#iv-after .generation"), probs


def _error_shown(page, message):
    page.wait_for_function(f"document.getElementById('error').textContent.includes({json.dumps(message)})")


def test_steering_sae_latents_and_patchscopes_in_a_real_browser(server, browser, toy, sae, tmp_path):
    """Every kind of the panel (steer a head, an MLP, a neuron; zero, scale, steer an SAE latent) gives Python's new
    top-1 and generation; the Patchscope form reads a head's output and a state after attention as ci.patchscope
    does; bad input is shown in the page and the next request is answered."""
    sae = ci.SAE.load(sae, model=toy)
    with page_of(browser, server) as page:
        page.fill("#prompt", PROMPT)
        page.click(".tab[data-view='contrast']")
        page.fill("#iv-tokens", "5")
        assert "64 latents at blocks.3.hook_resid_pre" in page.inner_text("#iv-sae")
        for fields, iv in _cases(toy, sae):
            top1, generated, probs = _intervened(toy, iv)
            shown_top1, shown_generated, shown_probs = _intervene_in_page(page, fields)
            assert (shown_top1, shown_generated) == (top1, generated.strip()), fields
            assert shown_probs == pytest.approx(probs, abs=1e-5), fields  # (the top-5 probabilities too)
            assert page.inner_text("#iv-after h3").startswith(fields["node"])
        page.fill("#iv-node", "sae:3")
        page.select_option("#iv-kind", "steer")
        assert not page.is_visible("#iv-toward") and "decoder row" in page.inner_text("#iv-help")
        page.set_viewport_size({"width": 1400, "height": 760})
        page.click("#why-run")
        page.wait_for_selector("#why-table tbody tr")
        fields, _ = _cases(toy, sae)[1]  # steer a2.h1 toward " store", away from " Mary"
        _intervene_in_page(page, fields)
        assert page.is_visible("#iv-toward") and "token_direction" in page.inner_text("#iv-help")
        # the docs' picture of the panel: CIRCUITFIND_SCREENSHOTS=1 writes it into docs/images/
        shot = SHOTS / "explorer-intervene.png" if os.environ.get("CIRCUITFIND_SCREENSHOTS") == "1" \
            else tmp_path / "explorer-intervene.png"
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 20_000

        for fields, message in (({"node": "sae:64", "kind": "zero"}, "between 0 and 63"),
                                ({"node": "m1", "kind": "steer", "value": "inf", "toward": " store"}, "finite number"),
                                ({"node": "sae:2", "kind": "steer", "value": "nan"}, "finite number"),
                                ({"node": "m1", "kind": "steer", "value": "4", "toward": ""}, "give the token")):
            page.fill("#iv-node", fields["node"])
            page.select_option("#iv-kind", fields["kind"])
            for key in ("value", "toward"):
                if key in fields:
                    page.fill(f"#iv-{key}", fields[key])
            page.click("#iv-run")
            _error_shown(page, message)
        top1, generated, _ = _intervened(toy, ci.Intervention("m3", "zero"))  # the server still answers
        assert _intervene_in_page(page, {"node": "m3", "kind": "zero"})[:2] == (top1, generated.strip())

        for source, token in (("a2.h1", "-1"), ("resid_mid:2", "3")):
            page.fill("#ps-source", source)
            page.fill("#ps-token", token)
            page.evaluate("document.getElementById('ps-out').textContent = ''")
            page.click("#ps-run")
            page.wait_for_function("document.getElementById('ps-out').textContent.length > 0")
            said = ci.patchscope(toy, PROMPT, source, source_position=int(token))
            assert page.inner_text("#ps-out").endswith(f"the model says {json.dumps(said)}"), source
        page.fill("#ps-source", "m1.n5")
        page.click("#ps-run")
        _error_shown(page, "is a neuron")

        page.click(".tab[data-view='prompt']")
        page.select_option("#model", "hostile-gpt2")  # a model without an SAE
        page.fill("#prompt", "a b c")
        page.click(".tab[data-view='contrast']")
        assert "no SAE loaded for hostile-gpt2" in page.inner_text("#iv-sae")
        page.fill("#iv-node", "sae:1")
        page.select_option("#iv-kind", "zero")
        page.click("#iv-run")
        _error_shown(page, "no SAE is loaded for hostile-gpt2")
        fields = {"node": "m0", "kind": "steer", "value": "50", "toward": HOSTILE}  # markup as the token: shown as text
        hostile = _hostile_model()  # (the server's: the same seeded weights)
        iv = ci.Intervention("m0", "steer", 50 * ci.token_direction(hostile, HOSTILE))
        assert _intervene_in_page(page, fields)[0] == _intervened(hostile, iv, "a b c")[0] == HOSTILE
        assert HOSTILE in page.inner_text("#iv-after h3") and page.locator("#iv-out script").count() == 0


def test_two_pages_at_once(server, browser, toy):
    with page_of(browser, server) as a, page_of(browser, server) as b:
        a.fill("#prompt", PROMPT)
        b.fill("#prompt", LONG)
        a.click("#run")
        b.click("#run")  # while a's request runs: queued behind it
        for page, prompt in ((a, PROMPT), (b, LONG)):
            page.wait_for_selector("#flow[data-ms]", timeout=30_000)
            page.locator("#tau").fill("0.1")
            assert page.locator("#flow line.flow-edge").count() == len(ci.flow(toy, prompt, tau=0.1).edges)


def test_runs_view_in_a_real_browser(server, browser, runs):
    with page_of(browser, server) as page:
        page.click(".tab[data-view='runs']")
        page.wait_for_selector("#run-a option", state="attached")
        page.select_option("#run-a", "ioi-eap")
        page.select_option("#run-b", "ioi-eap-ig")
        page.click("#runs-show")
        page.wait_for_function("document.getElementById('overlap').textContent.includes('IoU')")
        scores = cf.EdgeScores.load(runs / "ioi-eap")
        pane = page.locator(".pane[data-run='ioi-eap']")
        circuit = cf.Circuit.load(runs / "ioi-eap" / "circuit.json")
        assert pane.locator("path.edge").count() == circuit.n_edges
        for k in (1, 10, 40):  # the runs view draws with report.html's code: cf.prune's circuit at each k
            pane.locator("input.run-k").fill(str(k))
            assert pane.locator("path.edge").count() == cf.prune(scores, edges=k).n_edges, k
        assert page.locator(".pane").count() == 2 and pane.locator("svg.curve polyline").count() == 1
        assert pane.locator("table.top-edges td").first.inner_text() == scores.top(1)[0][0]
        other = cf.Circuit.load(runs / "ioi-eap-ig" / "circuit.json")
        assert f"shared {int((circuit.mask & other.mask).sum())} edges" in page.inner_text("#overlap")


def test_the_page_fetches_nothing_from_the_network(server):
    with urllib.request.urlopen(server + "/") as r:
        html = r.read().decode()
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html
    for name in ("draw.js", "explorer.js", "explorer.css"):
        with urllib.request.urlopen(f"{server}/assets/{name}") as r:
            assert r.status == 200 and "cdn" not in r.read().decode().lower()
