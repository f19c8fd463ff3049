"""GPT-J: parallel attention + MLP reading one shared LayerNorm, partial rotary over interleaved
pairs, an unembedding bias. Rotary is made half-split (the canonical form) by permuting each head's
query and key features alike, which leaves every q·k unchanged: interleaved pair (2i, 2i + 1) moves to
(i, i + rotary_dim/2), where rotate_half does what GPT-J's rotate_every_two did."""

from __future__ import annotations

import torch

from circuitfind.errors import UnsupportedModelError
from circuitfind.models.adapters.common import linear_t
from circuitfind.models.canonical import CanonicalConfig


def convert(hf):
    c = hf.config
    d, h = c.n_embd, c.n_head
    dh, rd = d // h, c.rotary_dim
    if not rd or rd > dh or rd % 2:
        raise UnsupportedModelError(f"gptj config has rotary_dim={rd!r}; circuitfind needs an even rotary_dim ≤ "
                                    f"the head size {dh}")
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rd, 2, dtype=torch.int64) / rd))  # as GPT-J's sinusoids
    cfg = CanonicalConfig(
        family="gptj", n_layers=c.n_layer, d_model=d, n_heads=h, n_kv_heads=h, d_head=dh,
        d_mlp=c.n_inner or 4 * d, d_vocab=c.vocab_size, n_ctx=c.n_positions, act_fn=c.activation_function,
        norm="layernorm", norm_eps=c.layer_norm_epsilon, positional="rotary", rotary_dim=rd, parallel=True)
    half = torch.cat([torch.arange(0, rd, 2), torch.arange(1, rd, 2), torch.arange(rd, dh)])  # new → old feature

    def half_split(w):  # [d, h·dh] with interleaved rotary pairs → the same with half-split ones
        return w.view(d, h, dh)[:, :, half].reshape(d, h * dh)

    t = hf.transformer
    state = {"W_E": t.wte.weight, "ln_final.w": t.ln_f.weight, "ln_final.b": t.ln_f.bias,
             "W_U": hf.lm_head.weight.t(), "b_U": hf.lm_head.bias}
    for l, blk in enumerate(t.h):
        p, a = f"blocks.{l}.", blk.attn
        state |= {p + "ln1.w": blk.ln_1.weight, p + "ln1.b": blk.ln_1.bias,
                  p + "ln2.w": blk.ln_1.weight, p + "ln2.b": blk.ln_1.bias,  # the MLP reads the same norm
                  p + "attn.w_q": half_split(linear_t(a.q_proj)), p + "attn.w_k": half_split(linear_t(a.k_proj)),
                  p + "attn.w_v": linear_t(a.v_proj), p + "attn.w_o": linear_t(a.out_proj),
                  p + "mlp.w_in": linear_t(blk.mlp.fc_in), p + "mlp.b_in": blk.mlp.fc_in.bias,
                  p + "mlp.w_out": linear_t(blk.mlp.fc_out), p + "mlp.b_out": blk.mlp.fc_out.bias}
    flags = dict(qkv_bias=False, out_bias=False, mlp_bias=True, unembed_bias=True)
    return cfg, flags, state, (inv_freq.float(), 1.0)
