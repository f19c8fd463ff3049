"""The explorer's ASGI app (Starlette): one page and its shipped assets, and a JSON API over `serve.explore`,
`serve.attends` and `serve.runs`.

Model work runs on one worker thread, in arrival order: a request that comes while another runs waits its turn
(never dropped), and `/api/status` tells the page how many wait and what runs, for its progress line. A bad
request (unknown model, empty prompt, prompt past the context, unknown node) is answered with status 400 and the
error's message, which the page shows; anything unexpected with 500 and its one-line description; the server
stays up either way. Behind a token (any host but loopback) every request must carry it: as `?token=` once (the
page then keeps it in a cookie), or in the `X-Circuitfind-Token` header.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from circuitfind.errors import CircuitfindError, ConfigError
from circuitfind.serve import attends as attends_mod
from circuitfind.serve import explore
from circuitfind.serve.runs import Runs

log = logging.getLogger("circuitfind.serve")
COOKIE = "circuitfind_token"
ASSETS = {"explorer.js": "application/javascript", "explorer.css": "text/css"}


def _asset(name: str) -> str:
    if name == "draw.js":
        from circuitfind.report.html import drawing_script

        return drawing_script()
    return (resources.files("circuitfind.serve") / "static" / name).read_text(encoding="utf-8")


class Explorer:
    """The server's state: which models the page may pick (and the ones loaded), where runs are, and the queue."""

    def __init__(self, models=None, runs: Runs | None = None, device: str = "cpu", saes=None):
        from circuitfind.models.zoo import ZOO, is_cached

        self.loaded = {}
        names = []
        for m in models or []:
            if isinstance(m, str):
                names.append(m)
            else:  # a loaded CircuitModel
                self.loaded[m.name] = m
                names.append(m.name)
        offline = [n for n, e in ZOO.items() if e.source != "hub" or is_cached(e)]
        self.models = list(dict.fromkeys(names + offline))
        self.runs, self.device = runs, device
        self.saes = dict(saes or {})  # model name → its SAE (checked against the model when it loads)
        unknown = sorted(set(self.saes) - set(self.models))
        if unknown:
            raise ConfigError(f"an SAE is given for {', '.join(map(repr, unknown))}, which the page does not offer; "
                              f"name one of: {', '.join(self.models)}")
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="circuitfind-serve")
        self.lock = threading.Lock()
        self.waiting, self.running = 0, None

    def model(self, name):
        if not isinstance(name, str) or name not in self.models:
            raise ConfigError(f"unknown model {name!r}; pick one of: {', '.join(self.models)}")
        if name not in self.loaded:
            from circuitfind.models.loading import load_model

            self.running = f"loading {name}"
            self.loaded[name] = load_model(name, device=self.device)
        if name in self.saes:
            self.saes[name].check(self.loaded[name])
        return self.loaded[name]

    def sae(self, model):
        """The SAE given for this model, or None."""
        return self.saes.get(model.name)

    async def run(self, what: str, fn):
        """fn() on the worker thread, after the work queued before it."""
        with self.lock:
            self.waiting += 1

        def job():
            with self.lock:
                self.waiting -= 1
            self.running = what
            try:
                return fn()
            finally:
                self.running = None
        return await asyncio.get_running_loop().run_in_executor(self.pool, job)

    def status(self) -> dict:
        return {"waiting": self.waiting, "running": self.running}


async def _body(request: Request) -> dict:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise ConfigError("the request's body is not JSON") from None
    if not isinstance(body, dict):
        raise ConfigError("the request's body must be a JSON object")
    return body


def _int(body: dict, key: str, default=None):
    value = body.get(key, default)
    if value is None or isinstance(value, bool):
        raise ConfigError(f"{key} must be an integer; got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be an integer; got {value!r}") from None


def _head(state, model, body: dict) -> dict:
    node = str(body.get("node", ""))
    kind, layer, head = explore.parse_node(model, node)
    if kind != "head":
        raise ConfigError(f"{node!r} is not a head (a head is named like a1.h2)")
    tokens = explore.prompt_tokens(model, body.get("prompt"))
    src = body.get("src")
    return attends_mod.attends(model, tokens, layer, head, _int(body, "dst", -1),
                               None if src is None else _int(body, "src"))


def _neurons(state, model, body: dict) -> dict:
    node = str(body.get("node", ""))
    kind, layer, _ = explore.parse_node(model, node)
    if kind != "mlp":
        raise ConfigError(f"{node!r} is not an MLP (an MLP is named like m2)")
    return explore.neurons(model, body.get("prompt"), layer, _int(body, "token", -1))


def _patchscope(state, model, body: dict) -> dict:
    """From a graph row (the page's state click) or a named source (the panel's form)."""
    source = explore.state_name(model, _int(body, "row")) if body.get("row") is not None else body.get("source")
    return explore.patchscope(model, body.get("prompt"), source, _int(body, "token", -1),
                              body.get("target") or explore.ci.IDENTITY_PROMPT, _int(body, "new_tokens", 5))


OPS = {  # POST /api/<op>: what each computes from the server's state, the model and the request's body
    "analyse": lambda s, m, b: explore.analyse(m, b.get("prompt"), _int(b, "k", 10)),
    "state": lambda s, m, b: explore.state(m, b.get("prompt"), _int(b, "row"), _int(b, "token")),
    "head": _head,
    "neurons": _neurons,
    "contrast": lambda s, m, b: explore.contrast(m, b.get("prompt"), b.get("a"), b.get("b")),
    "intervene": lambda s, m, b: explore.intervene(m, b.get("prompt"), b.get("node"), b.get("kind", "zero"),
                                                   b.get("value"), _int(b, "new_tokens", 8), toward=b.get("toward"),
                                                   away=b.get("away"), sae=s.sae(m)),
    "examples": lambda s, m, b: explore.examples(m, b.get("node"), b.get("task", "ioi"), _int(b, "n", 40)),
    "patchscope": _patchscope,
}


def _error(e: Exception) -> JSONResponse:
    if isinstance(e, CircuitfindError):
        return JSONResponse({"error": f"{type(e).__name__}: {e}"}, status_code=400)
    log.exception("the explorer's request failed")
    return JSONResponse({"error": f"internal error ({type(e).__name__}: {e}); the server is still running"},
                        status_code=500)


def create_app(models=None, runs: Runs | None = None, token: str | None = None, *, loopback: bool = True,
               device: str = "cpu", saes=None) -> Starlette:
    """The explorer as an ASGI app. models: zoo names or loaded CircuitModels the page may pick (the zoo's offline
    models are always offered); runs: what the runs view shows; token: required of every request when given;
    saes: {model name: ci.SAE} whose latents the intervention panel offers (`sae:i`)."""
    state = Explorer(models, runs, device, saes)

    async def index(request):
        return Response(_asset("index.html"), media_type="text/html; charset=utf-8")

    async def asset(request):
        name = request.path_params["name"]
        if name != "draw.js" and name not in ASSETS:
            return JSONResponse({"error": f"no asset {name!r}"}, status_code=404)
        return Response(_asset(name), media_type=ASSETS.get(name, "application/javascript"))

    async def models_(request):
        saes = {name: {"hook": sae.hook, "n_latents": sae.n_latents} for name, sae in state.saes.items()}
        return JSONResponse({"models": state.models, "loaded": list(state.loaded), "runs": state.runs is not None,
                             "saes": saes})

    async def status(request):
        return JSONResponse(state.status())

    async def op(request):
        name = request.path_params["op"]
        try:
            if name not in OPS:
                raise ConfigError(f"no operation {name!r}; known: {', '.join(OPS)}")
            body = await _body(request)
            return JSONResponse(await state.run(name, lambda: OPS[name](state, state.model(body.get("model")), body)))
        except Exception as e:  # noqa: BLE001 — every failure becomes an answer; the server stays up
            return _error(e)

    async def runs_(request):
        try:
            if state.runs is None:
                raise ConfigError("no runs here: start the server with --runs DIR or --sweep STORE")
            q = request.query_params
            if "a" in q and "b" in q:
                return JSONResponse(await state.run("overlap", lambda: state.runs.overlap(q["a"], q["b"])))
            if "name" in q:
                return JSONResponse(await state.run("run", lambda: state.runs.show(q["name"])))
            return JSONResponse({"runs": await state.run("runs", state.runs.list)})
        except Exception as e:  # noqa: BLE001
            return _error(e)

    routes = [Route("/", index), Route("/assets/{name}", asset), Route("/api/models", models_),
              Route("/api/status", status), Route("/api/runs", runs_), Route("/api/{op}", op, methods=["POST"])]
    middleware = [Middleware(LoopbackHosts)] if loopback else []
    app = Starlette(routes=routes, middleware=middleware)
    app.state.explorer = state
    return TokenGate(app, token) if token else app


class LoopbackHosts:
    """ASGI middleware of a server on loopback: answer only requests addressed to a loopback host (`localhost`,
    127.0.0.1, [::1], ...; `serve.loopback_host`), so a page of another site cannot reach the server by rebinding
    a DNS name to 127.0.0.1."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        from circuitfind.serve import loopback_host

        if scope["type"] in ("http", "websocket"):
            host = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1")
            if not loopback_host(host):
                response = JSONResponse({"error": f"this explorer answers only requests addressed to this machine "
                                                  f"(localhost, 127.0.0.1, [::1]); the Host was {host!r}"},
                                        status_code=400)
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


class TokenGate:
    """ASGI middleware: refuse (403) any request without the token; a page opened with `?token=` gets it as a
    cookie (HttpOnly, SameSite=Strict) for its later requests."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token

    def _given(self, scope) -> tuple[bool, bool]:
        """(the token came with the request, it came in the URL)."""
        from urllib.parse import parse_qs

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        in_url = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
        cookies = dict(c.strip().split("=", 1) for c in headers.get("cookie", "").split(";") if "=" in c)
        ok = [hmac.compare_digest(t.encode(), self.token.encode())
              for t in (headers.get("x-circuitfind-token", ""), in_url, cookies.get(COOKIE, ""))]
        return any(ok), ok[1]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        ok, in_url = self._given(scope)
        if not ok:
            response = JSONResponse({"error": "this circuitfind server needs its token: open the address it printed "
                                              "(…/?token=…) or send the X-Circuitfind-Token header"}, status_code=403)
            return await response(scope, receive, send)

        async def with_cookie(message):
            if in_url and message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [
                    (b"set-cookie", f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/".encode())]
            await send(message)
        await self.app(scope, receive, with_cookie)
