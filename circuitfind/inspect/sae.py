"""Sparse-autoencoder latents as nodes: load an SAE from a local safetensors file and use its latents
for vocabulary projection, attribution and top examples.

File: tensors `W_enc` [d_model, n], `b_enc` [n], `W_dec` [n, d_model], `b_dec` [d_model]; the hook
point (e.g. `blocks.3.hook_resid_post`) from the file's metadata key `hook` or the `hook=` argument.
Encoding: relu((x − b_dec) @ W_enc + b_enc); decoding: f @ W_dec + b_dec.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from circuitfind.errors import ConfigError, count
from circuitfind.inspect.common import position_in, ranked_tokens, token_id, tokens_of

KEYS = ("W_enc", "b_enc", "W_dec", "b_dec")


@dataclass
class SAE:
    """A sparse autoencoder on one hook point: f = ReLU((x − b_dec) W_enc + b_enc), x̂ = f W_dec + b_dec
    (`SAE.load` reads a safetensors file with these four tensors and the hook in its metadata)."""

    W_enc: Tensor
    b_enc: Tensor
    W_dec: Tensor
    b_dec: Tensor
    hook: str

    @property
    def n_latents(self) -> int:
        return self.W_enc.shape[1]

    @classmethod
    def load(cls, path, hook: str | None = None, model=None) -> "SAE":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no SAE file at {str(path)!r}")
        with safe_open(str(path), framework="pt") as f:
            missing = [k for k in KEYS if k not in f.keys()]
            if missing:
                raise ConfigError(f"{path.name} lacks {', '.join(missing)}; an SAE file holds {', '.join(KEYS)}")
            tensors = {k: f.get_tensor(k).float() for k in KEYS}
            hook = hook or (f.metadata() or {}).get("hook")
        if not hook:
            raise ConfigError("the SAE's hook point is neither in the file's metadata ('hook') nor given as hook=")
        d, n = tensors["W_enc"].shape
        if tensors["W_dec"].shape != (n, d) or tensors["b_enc"].shape != (n,) or tensors["b_dec"].shape != (d,):
            raise ConfigError(f"SAE shapes disagree: W_enc {tuple(tensors['W_enc'].shape)}, W_dec "
                              f"{tuple(tensors['W_dec'].shape)}, b_enc {tuple(tensors['b_enc'].shape)}, "
                              f"b_dec {tuple(tensors['b_dec'].shape)}")
        sae = cls(**tensors, hook=hook)
        if model is not None:
            sae.check(model)
        return sae

    def check(self, model) -> "SAE":
        """This SAE, if it reads a hook point of `model` at its width; else a ConfigError saying which differs."""
        if self.hook not in model.hook_names():
            raise ConfigError(f"the SAE's hook {self.hook!r} is not a hook point of {model.name!r}")
        if self.W_enc.shape[0] != model.cfg.d_model:
            raise ConfigError(f"the SAE reads width {self.W_enc.shape[0]} but {model.name!r} has d_model "
                              f"{model.cfg.d_model}")
        return self

    def encode(self, x: Tensor) -> Tensor:
        return torch.relu((x.float() - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, f: Tensor) -> Tensor:
        return f @ self.W_dec + self.b_dec


@torch.no_grad()
def latent_projection(model, sae: SAE, latent: int, k: int = 10) -> dict:
    """What a latent's decoder direction writes to the vocabulary (through the final norm's weight
    and W_U; meaningful for residual-stream SAEs): its top promoted and suppressed tokens."""
    count(k, "k")
    latent = count(latent, "latent", most=sae.n_latents - 1)
    direction = sae.W_dec[latent].to(model.dtype)
    norm = model.ln_final
    if norm.kind == "layernorm":
        direction = (direction - direction.mean()) * norm.w
    elif norm.kind == "rmsnorm":
        direction = direction * (norm.offset + norm.w)
    logits = direction @ model.W_U
    logits = logits - logits.mean()
    promoted, suppressed = ranked_tokens(model, logits, k)
    return {"promoted": promoted, "suppressed": suppressed}


def latent_attribution(model, sae: SAE, prompt, a, b, position: int = -1) -> Tensor:
    """First-order attribution of logit(a) − logit(b) to every latent at every position of one
    prompt: activation × gradient, with the SAE spliced in at its hook (reconstruction + the
    reconstruction error, so the model's output is unchanged). Returns [pos, n_latents]."""
    tokens = tokens_of(model, prompt)
    ia, ib = token_id(model, a), token_id(model, b)
    state = {}

    def splice(x, name):
        f = sae.encode(x).requires_grad_(True)
        state["f"] = f
        error = (x.float() - sae.decode(f)).detach()
        return (sae.decode(f) + error).to(x.dtype)

    with torch.enable_grad(), model.hooks({sae.hook: splice}):
        logits = model(tokens)[0, position_in(position, tokens.shape[-1])]
        (logits[ia] - logits[ib]).backward()
    f = state["f"]
    return (f * f.grad)[0].detach()
