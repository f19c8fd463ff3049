"""The canonical decomposed transformer that every architecture is converted into.

embed → blocks (attention as explicit per-head weights, MLP) → final norm → unembed.
A family's quirks are data in `CanonicalConfig` (parallel attention+MLP, post-norms, soft-capping,
q/k-norm, sliding windows, ...), never subclasses. The forward reproduces the source Hugging Face
model's logits (see tests/test_parity.py).

Weights are stored in the layout that makes the plain forward fast (`w_q: [d_model, head*d_head]`)
and exposed per head with TransformerLens names (`W_Q: [head, d_model, d_head]`).

Hook points (TransformerLens names) can read or replace activations:

    with model.hooks({"blocks.0.attn.hook_z": lambda z, name: z * 0}):
        logits = model(tokens)
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: "resid" in n)

The per-layer primitives (`Norm`, `Attention.attend`, `MLP`) live in `models/layers.py`; the engine
(`circuitfind.engine`) reuses them on tensors with extra leading dimensions.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from circuitfind.errors import ConfigError
from circuitfind.models.layers import ACTIVATIONS, Attention, Block, Norm, _maybe_bias, apply_rotary
from circuitfind.models.placement import move

__all__ = ["ACTIVATIONS", "Attention", "Block", "CanonicalConfig", "CircuitModel", "Norm", "apply_rotary",
           "pad_token_ids"]

HookFn = Callable[[Tensor, str], "Tensor | None"]


@dataclass(frozen=True)
class CanonicalConfig:
    """Everything the canonical forward needs to know about an architecture."""

    family: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    act_fn: str
    gated_mlp: bool = False
    norm: str = "layernorm"  # "layernorm" | "rmsnorm" | "none"
    norm_eps: float = 1e-5
    norm_offset: float = 0.0  # Gemma's RMSNorm multiplies by (1 + w)
    positional: str = "learned"  # "learned" | "rotary" | "alibi" | "none"
    rotary_dim: int = 0
    nope_layers: tuple[int, ...] = ()  # rotary models' layers without positions (SmolLM3)
    alibi_dtype: str | None = None  # the ALiBi term rounded to this dtype before alibi_scale (Falcon: "bfloat16")
    alibi_scale: float = 1.0
    parallel: bool = False  # attention and MLP read the same residual (GPT-NeoX)
    post_norms: bool = False  # norm on each block's output before it joins the residual (Gemma 2)
    qk_norm: bool = False  # a norm over d_head on queries and keys (Qwen3)
    qk_norm_kind: str = "rmsnorm"  # "rmsnorm" | "layernorm" (Phi, Persimmon, StableLM, Command-R)
    qk_norm_per_head: bool = False  # one weight per head (StableLM, Command-R)
    qk_norm_bias: bool = False
    qk_norm_width: str = "head"  # "head": over d_head; "all": RMSNorm over every head's projection together (OLMo 2)
    pre_norms: bool = True  # False: no norm before attention and MLP (OLMo 2 norms their outputs alone)
    attn_scale: float | None = None  # multiplies q·k; None means 1/sqrt(d_head)
    attn_softcap: float | None = None
    final_softcap: float | None = None
    sliding_window: int | None = None
    sliding_layers: tuple[int, ...] = ()
    embed_scale: float = 1.0
    embed_norm: bool = False  # a LayerNorm on the embeddings, part of the input sender (BLOOM)
    n_experts: int = 0  # mixture of experts: the MLP node is the whole block, router included
    top_k: int = 0
    norm_topk: bool = True  # the top-k router probabilities renormalised to sum to 1
    d_mlp_shared: int = 0  # a shared expert of this width under a sigmoid gate (Qwen-MoE)
    expert_senders: bool = False  # the expert-level graph: each expert a sender of its own (graph.py)
    moe_bias: bool = False  # biases on the router and on each expert's projections (gpt-oss)
    swiglu_limit: float | None = None  # gpt-oss's clamped SwiGLU: (clamp(up, ±L) + 1) · g σ(α g), g = min(gate, L)
    swiglu_alpha: float = 1.0
    attn_sinks: bool = False  # a learned logit per head in every softmax's denominator, of no key (gpt-oss)
    prepend_bos: bool = False  # circuitfind adds BOS itself when the tokenizer does not
    causal: bool = True  # compiled (tracr) models attend in both directions
    d_out: int | None = None  # logits width when it differs from the input vocabulary (tracr outputs)

    def __post_init__(self):
        if self.act_fn not in ACTIVATIONS:
            raise ConfigError(f"activation {self.act_fn!r} is unknown; known: {sorted(ACTIVATIONS)}")
        if self.qk_norm_width not in ("head", "all") or (self.qk_norm_width, self.qk_norm_kind) == ("all", "layernorm"):
            raise ConfigError(f"qk_norm_width {self.qk_norm_width!r} with {self.qk_norm_kind!r} is not modelled; "
                              "known: 'head' (any norm), 'all' (RMSNorm)")
        if self.positional not in ("learned", "rotary", "alibi", "none"):
            raise ConfigError(f"positional {self.positional!r} is unknown; known: learned, rotary, alibi, none")
        if self.expert_senders and not self.n_experts:
            raise ConfigError(f"expert_senders needs a mixture of experts; this {self.family} model has dense MLPs")
        if self.n_experts and not 0 < self.top_k <= self.n_experts:
            raise ConfigError(f"top_k={self.top_k} must be in [1, n_experts={self.n_experts}]")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")

    @property
    def scale(self) -> float:
        return self.attn_scale if self.attn_scale is not None else 1.0 / math.sqrt(self.d_head)

    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_kv_heads


class CircuitModel(nn.Module):
    """A transformer in canonical form, with hook points and tokenizer helpers.

    `model(tokens, attention_mask)` returns logits [batch, pos, vocab]. Padding (left or right)
    is honoured: positions count real tokens only, and padded keys are never attended to.
    """

    def __init__(self, cfg: CanonicalConfig, *, qkv_bias: bool, out_bias: bool, mlp_bias: bool,
                 unembed_bias: bool, tokenizer=None, name: str = ""):
        super().__init__()
        self.cfg, self.tokenizer, self.name = cfg, tokenizer, name or cfg.family
        # token-level models without a tokenizer may name their input tokens and output logits (tracr)
        self.token_names: list[str] | None = None
        self.output_names: list[str] | None = None
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model).normal_(std=0.02))
        self.W_pos = nn.Parameter(torch.zeros(cfg.n_ctx, cfg.d_model)) if cfg.positional == "learned" else None
        self.ln_embed = Norm("layernorm", cfg.d_model, cfg.norm_eps) if cfg.embed_norm else None
        self.blocks = nn.ModuleList(Block(cfg, l, qkv_bias, out_bias, mlp_bias) for l in range(cfg.n_layers))
        self.ln_final = Norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.norm_offset)
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_out or cfg.d_vocab).normal_(std=0.02))
        self.b_U = _maybe_bias(cfg.d_out or cfg.d_vocab, unembed_bias)
        self.register_buffer("inv_freq", torch.zeros(cfg.rotary_dim // 2), persistent=False)
        self.rope_scaling = 1.0
        # sliding-window layers' own rotary frequencies (Gemma 3); empty: they share inv_freq
        self.register_buffer("inv_freq_local", torch.zeros(0), persistent=False)
        self.rope_scaling_local = 1.0
        self._hook_fns: dict[str, list[HookFn]] = {}
        self._graph = None
        self.ground_truth: dict[str, list[str]] = {}  # task name → edge names, where a circuit is known
        self.ground_truth_weights: dict[str, list[str]] = {}  # tracr: the edges whose weights connect (a superset)

    # ------------------------------------------------------------------ pieces the engine reuses
    @property
    def graph(self):
        """The edge graph of this model (`circuitfind.graph.Graph`), built once from the config."""
        if self._graph is None:
            from circuitfind.graph import Graph  # the graph sits above models in the import chain
            self._graph = Graph.from_config(self.cfg)
        return self._graph

    @property
    def device(self) -> torch.device:
        return self.W_E.device

    layer_devices: list[torch.device] | None = None  # per layer, then the head's, where `place` spread them

    def layer_device(self, layer: int) -> torch.device:
        """The device layer `layer` computes on (layer n_layers: the final norm and unembedding)."""
        return self.device if self.layer_devices is None else self.layer_devices[layer]

    def place(self, device_map) -> "CircuitModel":
        """This model with its embedding, layers and head on the devices of a transformers-style `device_map`
        (`models.placement`); the walks and the plain forward move the residual stream at layer boundaries."""
        from circuitfind.models.placement import resolve_device_map

        embed, devices = resolve_device_map(device_map, self.cfg.n_layers)
        for name in ("W_E", "W_pos"):
            if getattr(self, name) is not None:
                setattr(self, name, nn.Parameter(getattr(self, name).data.to(embed), requires_grad=False))
        self.inv_freq, self.inv_freq_local = self.inv_freq.to(embed), self.inv_freq_local.to(embed)
        if self.ln_embed is not None:
            self.ln_embed.to(embed)
        for block, device in zip(self.blocks, devices):
            block.to(device)
        self.ln_final.to(devices[-1])
        self.W_U = nn.Parameter(self.W_U.to(devices[-1]), requires_grad=False)
        if self.b_U is not None:
            self.b_U = nn.Parameter(self.b_U.to(devices[-1]), requires_grad=False)
        self.layer_devices = devices
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.W_E.dtype

    def positions(self, attention_mask: Tensor) -> Tensor:
        """Position ids [batch, pos] counting real tokens only (left padding starts at 0)."""
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def embed(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """tokens, positions [batch, pos] → the `input` sender's output [batch, pos, d_model]."""
        if tokens.numel() and int(tokens.max()) >= self.cfg.d_vocab:  # (a tokenizer's vocabulary may outgrow it)
            raise ConfigError(f"token id {int(tokens.max())} is past {self.name!r}'s embedding of {self.cfg.d_vocab} "
                              "tokens: is the tokenizer the model's own?")
        x = self.W_E[tokens]
        if self.cfg.embed_scale != 1.0:
            x = x * torch.tensor(self.cfg.embed_scale, dtype=x.dtype)
        x = self._hook("hook_embed", x)
        if self.W_pos is not None:
            x = x + self._hook("hook_pos_embed", self.W_pos[positions])
        return x if self.ln_embed is None else self.ln_embed(x)

    def rope(self, positions: Tensor, layer: int = 0) -> tuple[Tensor, ...] | None:
        """(cos, sin) of layer's attention, each [batch, pos, rotary_dim]; under ALiBi (positions [batch, pos, 1],),
        what its score bias needs; None without rotary positions (or in a layer without them)."""
        if self.cfg.positional == "alibi":
            return (positions[..., None].to(self.dtype),)
        if self.cfg.positional != "rotary" or layer in self.cfg.nope_layers:
            return None
        inv_freq, scaling = self.inv_freq, self.rope_scaling
        if self.local_rope(layer):
            inv_freq, scaling = self.inv_freq_local, self.rope_scaling_local
        freqs = positions[..., None].float() * inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        return ((emb.cos() * scaling).to(self.dtype), (emb.sin() * scaling).to(self.dtype))

    def rope_key(self, layer: int) -> tuple[bool, bool]:
        """Layers with the same key rotate alike: (without positions, by the sliding layers' frequencies)."""
        return layer in self.cfg.nope_layers, self.local_rope(layer)

    def local_rope(self, layer: int) -> bool:
        """Does the layer rotate by the sliding layers' own frequencies?"""
        return self.inv_freq_local.numel() > 0 and layer in self.cfg.sliding_layers

    def allowed(self, attention_mask: Tensor, layer: int) -> Tensor:
        """Which keys each query may attend to: bool [batch, 1, q_pos, k_pos].

        Causal (unless the config says otherwise), padded keys excluded, sliding window where the layer
        has one. Every position may
        attend to itself, so padded query rows stay finite (their outputs are never read).
        """
        p = attention_mask.shape[-1]
        idx = torch.arange(p, device=attention_mask.device)
        rel = idx[:, None] - idx[None, :]  # q - k
        ok = rel >= 0 if self.cfg.causal else torch.ones_like(rel, dtype=torch.bool)
        if layer in self.cfg.sliding_layers and self.cfg.sliding_window is not None:
            ok = ok & (rel < self.cfg.sliding_window)
        ok = ok[None] & attention_mask.bool()[:, None, :]
        return (ok | torch.eye(p, dtype=torch.bool, device=ok.device))[:, None]

    def block_bias(self, layer: int, kind: str) -> Tensor | None:
        """The constant a block adds to the residual stream ("attn": b_O, "mlp": b_out), or None."""
        block = self.blocks[layer]
        if kind == "attn":
            return block.attn.b_o if block.attn.post_norm is None else None
        return block.mlp.b_out if block.mlp.post_norm is None else None

    def unembed(self, resid: Tensor, wide: bool = False, detach_scale: bool = False) -> Tensor:
        """resid [..., d_model] → logits [..., vocab] (final norm, unembedding, soft-capping).

        wide: in float32 whatever the model's dtype, for the few rows a metric reads. A metric is a
        difference of logits: in bfloat16, whose step at a logit of 8 is 0.03, most edges' exact effects
        would be rounding (on toy-lm IOI the median |effect| is 0.004; the median error against float32
        falls from 0.012 to 0.003 with these logits). detach_scale: the final norm's, as `Norm.forward`'s."""
        if wide and resid.dtype.itemsize < 4:
            resid = resid.float()
        x = self._hook("ln_final.hook_normalized", self.ln_final(resid, detach_scale))
        if self.W_U.dtype == x.dtype:
            logits = x @ self.W_U
        else:  # the weights widened a slice of the vocabulary at a time: no float32 copy of them is kept
            step = max(1, (1 << 24) // self.W_U.shape[0])
            logits = torch.cat([x @ self.W_U[:, i: i + step].to(x.dtype) for i in range(0, self.W_U.shape[1], step)],
                               dim=-1)
        if self.b_U is not None:
            logits = logits + self.b_U.to(logits.dtype)
        if self.cfg.final_softcap is not None:
            logits = torch.tanh(logits / self.cfg.final_softcap) * self.cfg.final_softcap
        return logits

    # ------------------------------------------------------------------ the plain forward
    def forward(self, tokens: Tensor, attention_mask: Tensor | None = None, at: Tensor | None = None) -> Tensor:
        """tokens [batch, pos] (int), attention_mask [batch, pos] (1 = real) → logits [batch, pos, vocab];
        with at, one position per prompt [batch], → logits [batch, vocab] there only (the unembedding,
        the largest product for big vocabularies, then runs on those rows alone), in float32."""
        tokens = self._check_tokens(tokens)
        if at is not None and (at.shape != tokens.shape[:1] or bool((at < 0).any()) or bool((at >= tokens.shape[1]).any())):
            raise ConfigError(f"at must hold one position per prompt, each in [0, {tokens.shape[1]}), as a "
                              f"[{tokens.shape[0]}] tensor; got shape {tuple(at.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(tokens)
        positions = self.positions(attention_mask)
        ropes = {}  # by `rope_key`: layers that rotate alike share one
        for l in range(self.cfg.n_layers):
            if self.rope_key(l) not in ropes:
                rope = self.rope(positions, l)
                ropes[self.rope_key(l)] = None if rope is None else tuple(t[:, None] for t in rope)  # over heads
        resid = self.embed(tokens, positions)
        for l, block in enumerate(self.blocks):
            rope, allowed = ropes[self.rope_key(l)], self.allowed(attention_mask, l)
            if self.layer_devices is not None:  # layers over several devices: the stream moves to the layer's
                resid, allowed = move(resid, self.layer_devices[l]), allowed.to(self.layer_devices[l])
                rope = None if rope is None else tuple(t.to(self.layer_devices[l]) for t in rope)
            resid = self._block_forward(l, block, resid, rope, allowed)
        resid = move(resid, self.layer_device(self.cfg.n_layers))
        if at is not None:  # the rows a metric reads: their logits in float32 (`unembed`)
            resid = resid[torch.arange(resid.shape[0], device=resid.device), at.to(resid.device)]
        return self.unembed(resid, wide=at is not None)

    def _block_forward(self, l: int, block: Block, resid: Tensor, rope, allowed: Tensor) -> Tensor:
        resid = self._hook(f"blocks.{l}.hook_resid_pre", resid)
        attn_out = self._hook(f"blocks.{l}.hook_attn_out", self._attn_forward(l, block.attn, block.ln1(resid), rope, allowed))
        mlp_in = resid if self.cfg.parallel else resid + attn_out
        if not self.cfg.parallel:
            resid = self._hook(f"blocks.{l}.hook_resid_mid", mlp_in)
        if self.cfg.n_experts:  # a mixture of experts has no one hidden layer to hook
            mlp_out = block.mlp(block.ln2(mlp_in))
        else:
            pre, post = block.mlp.hidden(block.ln2(mlp_in))
            self._hook(f"blocks.{l}.mlp.hook_pre", pre)
            post = self._hook(f"blocks.{l}.mlp.hook_post", post)
            mlp_out = block.mlp.output(post)
        if block.mlp.b_out is not None and block.mlp.post_norm is None:
            mlp_out = mlp_out + block.mlp.b_out
        mlp_out = self._hook(f"blocks.{l}.hook_mlp_out", mlp_out)
        resid = (resid + attn_out if self.cfg.parallel else resid) + mlp_out
        return self._hook(f"blocks.{l}.hook_resid_post", resid)

    def _attn_forward(self, l: int, attn: Attention, x: Tensor, rope, allowed: Tensor) -> Tensor:
        """x [batch, pos, d_model] (normed) → attention block output [batch, pos, d_model]."""
        b, p, _ = x.shape
        dh, name = self.cfg.d_head, f"blocks.{l}.attn"
        q, k, v = _project(x, attn)
        q, k = attn.full_norm("q", q), attn.full_norm("k", k)  # (over every head together, where the family does)
        q, k, v = (y.view(b, p, -1, dh) for y in (q, k, v))
        q, k, v = (self._hook(f"{name}.hook_{n}", t).transpose(1, 2) for n, t in zip("qkv", (q, k, v)))
        want_pattern = f"{name}.hook_pattern" in self._hook_fns
        z, pattern = attn.attend(q, k, v, rope, allowed, want_pattern)
        if pattern is not None:
            self._hook(f"{name}.hook_pattern", pattern)
        z = self._hook(f"{name}.hook_z", z.transpose(1, 2))  # [batch, pos, head, d_head]
        if f"{name}.hook_result" in self._hook_fns:
            result = self._hook(f"{name}.hook_result", torch.einsum("bphe,hed->bphd", z, attn.W_O))
            out = result.sum(-2)
        else:
            out = z.reshape(b, p, -1) @ attn.w_o
        if attn.post_norm is not None:
            return attn.post_norm(out)
        return out if attn.b_o is None else out + attn.b_o

    def _check_tokens(self, tokens: Tensor) -> Tensor:
        if not isinstance(tokens, Tensor) or tokens.dtype not in (torch.int64, torch.int32):
            raise ConfigError(f"tokens must be an integer tensor [batch, pos]; got {type(tokens).__name__}"
                              f"{'' if not isinstance(tokens, Tensor) else ' of ' + str(tokens.dtype)} "
                              "(use model.to_tokens(text) to tokenize)")
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.shape[-1] > self.cfg.n_ctx:
            raise ConfigError(f"{tokens.shape[-1]} tokens exceed the model's context of {self.cfg.n_ctx}")
        return tokens

    # ------------------------------------------------------------------ hooks
    def _hook(self, name: str, x: Tensor) -> Tensor:
        for fn in self._hook_fns.get(name, ()):
            out = fn(x, name)
            if out is not None:
                x = out
        return x

    @contextlib.contextmanager
    def hooks(self, fns: Mapping[str, HookFn] | list[tuple[str, HookFn]]) -> Iterator["CircuitModel"]:
        """Add forward hooks for the duration of a `with` block.

        A hook is `fn(activation, name)`; returning a tensor replaces the activation, returning
        None only reads it. Unknown names raise, so a typo cannot silently do nothing.
        """
        items = list(fns.items()) if isinstance(fns, Mapping) else list(fns)
        known = set(self.hook_names())
        for name, _ in items:
            if name not in known:
                raise ConfigError(f"unknown hook point {name!r}; e.g. {sorted(known)[:6]} (see model.hook_names())")
        for name, fn in items:
            self._hook_fns.setdefault(name, []).append(fn)
        try:
            yield self
        finally:
            for name, fn in items:
                self._hook_fns[name].remove(fn)
                if not self._hook_fns[name]:
                    del self._hook_fns[name]

    def hook_names(self) -> list[str]:
        names = ["hook_embed", "ln_final.hook_normalized"] + (["hook_pos_embed"] if self.W_pos is not None else [])
        per_layer = ["hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post"] \
            + ([] if self.cfg.n_experts else ["mlp.hook_pre", "mlp.hook_post"]) \
            + [f"attn.hook_{n}" for n in ("q", "k", "v", "z", "pattern", "result")]
        if not self.cfg.parallel:
            per_layer.append("hook_resid_mid")
        return names + [f"blocks.{l}.{n}" for l in range(self.cfg.n_layers) for n in per_layer]

    @torch.no_grad()
    def run_with_cache(self, tokens: Tensor, attention_mask: Tensor | None = None,
                       names_filter: Callable[[str], bool] | list[str] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Run the model and return (logits, {hook name: activation}) for the hooks that pass the filter."""
        if names_filter is None:
            names = self.hook_names()
        elif callable(names_filter):
            names = [n for n in self.hook_names() if names_filter(n)]
        else:
            names = list(names_filter)
        cache: dict[str, Tensor] = {}
        with self.hooks([(n, lambda x, name: cache.__setitem__(name, x.detach())) for n in names]):
            logits = self(tokens, attention_mask)
        return logits, cache

    # ------------------------------------------------------------------ tokenizer helpers
    def to_tokens(self, text: str | list[str], prepend_bos: bool | None = None,
                  padding_side: str = "right", return_attention_mask: bool = False):
        """Text → token ids [batch, pos] (padded), adding BOS as the family does.

        With `return_attention_mask=True`, returns (tokens, attention_mask).
        """
        tok = self._need_tokenizer()
        texts = [text] if isinstance(text, str) else list(text)
        ids = [tok(t, add_special_tokens=True)["input_ids"] for t in texts]
        bos = tok.bos_token_id
        if (self.cfg.prepend_bos if prepend_bos is None else prepend_bos) and bos is not None:
            ids = [s if s[:1] == [bos] else [bos] + s for s in ids]
        elif prepend_bos is False and bos is not None:
            ids = [s[1:] if s[:1] == [bos] else s for s in ids]
        return pad_token_ids(ids, self.pad_token_id, padding_side, return_attention_mask)

    def to_str_tokens(self, text_or_tokens) -> list[str] | list[list[str]]:
        """Each token as its own string (one list per prompt)."""
        tok = self._need_tokenizer()
        tokens = self.to_tokens(text_or_tokens) if isinstance(text_or_tokens, (str, list)) else text_or_tokens
        rows = [[tok.decode([int(t)]) for t in row] for row in tokens.reshape(-1, tokens.shape[-1])]
        return rows[0] if tokens.ndim == 1 or (isinstance(text_or_tokens, str)) else rows

    def to_string(self, tokens: Tensor) -> str | list[str]:
        tok = self._need_tokenizer()
        if tokens.ndim == 1:
            return tok.decode(tokens.tolist())
        return [tok.decode(row.tolist()) for row in tokens]

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        if tok is None:
            return 0
        for cand in (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id):
            if cand is not None:
                return cand
        return 0

    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise ConfigError(f"model {self.name!r} has no tokenizer; pass token ids instead of text, or load it with "
                              "one: load_model(..., tokenizer=DIR_OR_HUB_ID), --tokenizer on the command line")
        return self.tokenizer

    def __repr__(self) -> str:
        c = self.cfg
        return (f"CircuitModel({self.name!r}: {c.family}, {c.n_layers} layers, {c.n_heads} heads"
                f"{f' ({c.n_kv_heads} kv)' if c.n_kv_heads != c.n_heads else ''}, d_model {c.d_model})")


def _project(x: Tensor, attn: Attention) -> tuple[Tensor, Tensor, Tensor]:
    """x [..., d_model] → q [..., head*d_head], k, v [..., kv_head*d_head], biases added."""
    out = []
    for w, b in ((attn.w_q, attn.b_q), (attn.w_k, attn.b_k), (attn.w_v, attn.b_v)):
        y = x @ w
        out.append(y if b is None else y + b)
    return out[0], out[1], out[2]


def pad_token_ids(ids: list[list[int]], pad_id: int, padding_side: str = "right",
                  return_attention_mask: bool = False):
    """Pad lists of token ids into tokens [batch, pos] (and attention_mask if asked)."""
    if padding_side not in ("left", "right"):
        raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    width = max(len(s) for s in ids)
    def placed(row: list[int], fill: int) -> list[int]:  # padded as a list: one tensor for all, not a write per row
        pad = [fill] * (width - len(row))
        return list(row) + pad if padding_side == "right" else pad + list(row)
    tokens = torch.tensor([placed(s, pad_id) for s in ids], dtype=torch.long)
    mask = torch.tensor([placed([1] * len(s), 0) for s in ids], dtype=torch.long)
    return (tokens, mask) if return_attention_mask else tokens
