"""`circuitfind serve`: the live explorer — a local web page over the inspection tools and the run directories.

    from circuitfind.serve import create_app, serve
    serve(models=["toy-lm"], runs="runs/", port=8765)       # blocks; http://127.0.0.1:8765/
    serve(models=["toy-lm"], saes={"toy-lm": "sae.safetensors"})   # its latents in the intervention panel

Views: a prompt's prediction and token-by-layer graph (click a state for its logit lens, an attention edge for its
heads, their patterns and why they attend, an FFN edge for the MLP's top neurons), "why A not B" with an
intervention panel (zero, scale or steer a head, an MLP, a neuron or an SAE latent) and a Patchscope from any state
or node, and the runs under `runs` (or a sweep store's jobs) drawn as report.html draws them.
Starlette and uvicorn (`pip install circuitfind[serve]`); every asset is shipped in the package.
"""

from __future__ import annotations

import ipaddress
import secrets

from circuitfind.errors import ConfigError

LOOPBACK_NAMES = ("localhost",)


def bare(host: str) -> str:
    """An address as a socket takes it: an IPv6 literal without its brackets ("[::1]" → "::1")."""
    host = host.strip()
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server to this machine: localhost, or a loopback address (127.0.0.0/8,
    ::1, with or without brackets)."""
    host = bare(host)
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_host(header: str | None) -> bool:
    """Whether a request's Host header ("127.0.0.1:8765", "localhost", "[::1]:8765") names this machine."""
    header = (header or "").strip()
    if header.startswith("["):  # an IPv6 literal, then perhaps ":port"
        end = header.find("]")
        host, rest = header[: end + 1], header[end + 1:] if end > 0 else ""
        if end < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return False
    else:
        host, colon, port = header.partition(":")
        if colon and not port.isdigit():
            return False
    return bool(host) and is_loopback(host)


def access(host: str, token: str | None) -> str | None:
    """The token the server will require: none on loopback unless given; elsewhere the given one, or a new one."""
    if token is not None and not token.strip():
        raise ConfigError("--token is empty; give a secret, or leave --token out for a generated one")
    if is_loopback(host):
        return token
    return token or secrets.token_urlsafe(24)


def build(models=None, runs=None, sweep=None, host: str = "127.0.0.1", token: str | None = None,
          device: str = "cpu", *, load: bool = False, saes=None):
    """The app and the token it requires, every argument checked before anything loads. load: load the models
    named by a string now (a wrong name fails here; the zoo's offline models load when the page first asks).
    saes: {model name: SAE file or ci.SAE}, the SAE whose latents the page may intervene on for that model."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError("the explorer needs Starlette and uvicorn: pip install 'circuitfind[serve]'") from None
    from circuitfind.serve.app import create_app
    from circuitfind.serve.runs import Runs

    if runs is not None and sweep is not None:
        raise ConfigError("give --runs DIR or --sweep STORE, not both")
    token = access(host, token)
    found = Runs(runs, sweep) if runs is not None or sweep is not None else None
    saes = _saes(saes)
    if load:
        from circuitfind.models.loading import load_model

        models = [load_model(m, device=device) if isinstance(m, str) else m for m in models or []]
    for m in models or []:  # an SAE that does not fit a loaded model fails here, before the server starts
        if not isinstance(m, str) and m.name in saes:
            saes[m.name].check(m)
    return create_app(models, found, token, loopback=is_loopback(host), device=device, saes=saes), token


def _saes(saes) -> dict:
    """{model name: ci.SAE}, the files read (and each file's tensors checked) now."""
    from circuitfind.inspect.sae import SAE

    return {name: sae if isinstance(sae, SAE) else SAE.load(sae) for name, sae in dict(saes or {}).items()}


def sae_arguments(given, models) -> dict:
    """`--sae MODEL=PATH` (repeatable; MODEL any model the page offers), or `--sae PATH` when exactly one --model is
    named: {model: path}."""
    from pathlib import Path

    out = {}
    for text in given or []:
        name, eq, path = text.partition("=")
        if not eq or not name or Path(text).is_file():  # a bare path (which may hold "=")
            if len(models or []) != 1:
                raise ConfigError(f"--sae {text}: say which model the SAE is for, as --sae MODEL=PATH (or name "
                                  f"exactly one --model; given: {', '.join(models or []) or 'none'})")
            name, path = models[0], text
        if name in out:
            raise ConfigError(f"two SAEs for {name!r}; the page takes one per model")
        out[name] = path
    return out


def serve(models=None, runs=None, sweep=None, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
          device: str = "cpu", on_ready=None, saes=None) -> None:
    """Run the explorer until interrupted. on_ready(url): called with the page's address (with its token)."""
    import uvicorn

    app, token = build(models, runs, sweep, host, token, device, load=True, saes=saes)
    host = bare(host)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    if on_ready is not None:
        on_ready(url)
    server.run()


def create_app(*args, **kw):
    """`circuitfind.serve.app.create_app` (imported when called: Starlette is an extra)."""
    from circuitfind.serve.app import create_app as make

    return make(*args, **kw)


__all__ = ["access", "bare", "build", "create_app", "is_loopback", "loopback_host", "serve"]
