"""A hand-weighted 2-layer attention-only induction model whose circuit is known on paper.

Residual subspaces: token (V) | position (P) | previous token (V) | output (V).
- a0.h0, the previous-token head: queries and keys from positions, score β where key = query − 1;
  it copies the key position's token into the previous-token subspace.
- a1.h0, the induction head: queries from the current token, keys from the previous-token subspace
  (K-composition with a0.h0), so position j scores when token[j − 1] == current token; it copies
  token[j] to the output subspace, which the unembedding reads.
Other heads and the MLPs are zero.
"""

from __future__ import annotations

import torch

from circuitfind.models.canonical import CanonicalConfig, CircuitModel

V, P, HEADS, BETA = 20, 32, 4, 30.0


def induction_model() -> CircuitModel:
    dh = max(V, P)
    cfg = CanonicalConfig(family="toy", n_layers=2, d_model=3 * V + P, n_heads=HEADS, n_kv_heads=HEADS, d_head=dh,
                          d_mlp=4, d_vocab=V, n_ctx=P, act_fn="relu", norm="none", positional="learned",
                          attn_scale=1.0)
    tok, pos, prev, out = slice(0, V), slice(V, V + P), slice(V + P, 2 * V + P), slice(2 * V + P, 3 * V + P)
    m = CircuitModel(cfg, qkv_bias=False, out_bias=False, mlp_bias=False, unembed_bias=False)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.W_E[:, tok] = torch.eye(V)
        m.W_pos[:, pos] = torch.eye(P)
        a0, a1 = m.blocks[0].attn, m.blocks[1].attn
        # a0.h0: query position i → e_i, key position j → e_{j+1}: score β when j = i − 1
        a0.w_q[pos, :P] = BETA * torch.eye(P)
        a0.w_k[pos, :P] = torch.diag(torch.ones(P - 1), 1)  # row j → column j + 1
        a0.w_v[tok, :V] = torch.eye(V)
        a0.w_o[:V, prev] = torch.eye(V)
        # a1.h0: query = current token, key = previous token of the key position
        a1.w_q[tok, :V] = BETA * torch.eye(V)
        a1.w_k[prev, :V] = torch.eye(V)
        a1.w_v[tok, :V] = torch.eye(V)
        a1.w_o[:V, out] = torch.eye(V)
        m.W_U[out, :] = torch.eye(V)
    m.ground_truth = {"induction": ["input->a0.h0<v>", "a0.h0->a1.h0<k>", "input->a1.h0<v>", "a1.h0->logits",
                                    "input->a0.h0<q>", "input->a0.h0<k>", "input->a1.h0<q>"]}
    return m.eval().requires_grad_(False)
