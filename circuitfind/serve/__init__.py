"""`circuitfind serve`: the live explorer — a local web page over the inspection tools and the run directories.

    from circuitfind.serve import create_app, serve
    serve(models=["toy-lm"], runs="runs/", port=8765)       # blocks; http://127.0.0.1:8765/

Views: a prompt's prediction and token-by-layer graph (click a state for its logit lens, an attention edge for its
heads, their patterns and why they attend, an FFN edge for the MLP's top neurons), "why A not B" with an
intervention panel, and the runs under `runs` (or a sweep store's jobs) drawn as report.html draws them.
Starlette and uvicorn (`pip install circuitfind[serve]`); every asset is shipped in the package.
"""

from __future__ import annotations

import ipaddress
import secrets

from circuitfind.errors import ConfigError

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server to this machine."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def access(host: str, token: str | None) -> str | None:
    """The token the server will require: none on loopback unless given; elsewhere the given one, or a new one."""
    if token is not None and not token.strip():
        raise ConfigError("--token is empty; give a secret, or leave --token out for a generated one")
    if is_loopback(host):
        return token
    return token or secrets.token_urlsafe(24)


def build(models=None, runs=None, sweep=None, host: str = "127.0.0.1", token: str | None = None,
          device: str = "cpu", *, load: bool = False):
    """The app and the token it requires, every argument checked before anything loads. load: load the models
    named by a string now (a wrong name fails here; the zoo's offline models load when the page first asks)."""
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
    if load:
        from circuitfind.models.loading import load_model

        models = [load_model(m, device=device) if isinstance(m, str) else m for m in models or []]
    return create_app(models, found, token, loopback=is_loopback(host), device=device), token


def serve(models=None, runs=None, sweep=None, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
          device: str = "cpu", on_ready=None) -> None:
    """Run the explorer until interrupted. on_ready(url): called with the page's address (with its token)."""
    import uvicorn

    app, token = build(models, runs, sweep, host, token, device, load=True)
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


__all__ = ["access", "build", "create_app", "is_loopback", "serve"]
