"""What the engine allocates, counted from a model's shape alone: the memory model behind `circuitfind.plan`.

Every term below names the tensors of the engine it counts (read off the code, not fitted), in elements of
the model's dtype unless it says float32. Notation: b examples a pass, p positions, d = d_model, S senders,
R receivers, H query heads of d_head each (hd = H·d_head), L layers, W = b·p·d (one sender's output over the
batch: a column of the store `DiffStore`).

    ablated outputs   [src, b, p, d] of the corrupted run (`ablation.ablated_outputs`): S·W. Attribution
                      writes D = out − abl over it (`attribute(consume=True)`), so it is also the store.
    store             the masked walks' D `[K, src, W]` (`store.DiffStore`): S·W more for the curve's and exact's
                      walks, which keep the ablated outputs beside it.
    gradients         what autograd keeps of the clean pass with gradients (`walk_grad.py`), per layer and
                      token: the residual into each norm (2d), q|k|v projected together with one key and value
                      per query head (3·hd), rotated q and k (2·hd, rotary models), the attention output (hd),
                      the MLP's pre-activation (d_mlp; gated: gate, up and act(gate), 3·d_mlp) — the weights
                      need no gradient, so no product keeps its input;
                      plus, at the top of the backward, one layer's gradients (q|k|v's and the copy
                      `pull_back` projects from, 6·hd + 2d, or the MLP's) and the chunk buffers
                      (`GRAD_CHUNK_ELEMENTS`: twice a chunk of positions' q|k|v gradients), the transposed weights 3·hd·d).
    method buffers    the logits kept for every example (clean and empty circuit, float32 [n, vocab]), the
                      scores (float32 [dst, src], a few copies), per-example scores, a sweep's masks
                      (float32 [k, dst, src]), the receiver-input scratch of masked walks ([3H + 1, K, W]),
                      the per-mask copies of exact patching, and one layer's working tensors.

    allocator         on the CPU, glibc's heap: blocks smaller than its mmap threshold (which rises to 32 MiB as
                      large blocks are freed) go back to a heap that keeps them, and a pass whose blocks come in
                      other sizes takes new pages: one pass's saved activations more for attribution, two for
                      several passes (measured: `benchmarks/plan.py`; with MALLOC_MMAP_THRESHOLD_ fixed, ~0).

Time is counted in plain forwards of the whole task (matrix-product FLOPs, 2·parameters·tokens + attention),
a backward as two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from circuitfind.engine.offload import STREAM_CHUNK_BYTES
from circuitfind.engine.walk_grad import GRAD_CHUNK_ELEMENTS

GRADIENT_METHODS = ("eap", "eap-ig", "eap-node", "eap-ig-node", "clean-corrupted", "atp-star")
MASKED_METHODS = ("curve", "exact", "exact-node", "exact-denoising", "exact-node-denoising")
METHODS_PLANNED = GRADIENT_METHODS + MASKED_METHODS
CURVE_MASKS = 19  # the MIB curve's distinct circuits: the empty one, 9 sizes × 2 rankings (the full graph is the clean run)


@dataclass(frozen=True)
class Shape:
    """What memory and time depend on: a model's dimensions, graph sizes and parameter bytes."""

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    gated: bool
    rmsnorm: bool
    rotary: bool
    n_senders: int
    n_receivers: int
    n_edges: int
    param_bytes: int
    block_params: int  # parameters of the blocks (the matrix products of a forward)

    @classmethod
    def of(cls, cfg, graph, param_bytes: int, block_params: int) -> "Shape":
        """From a `CanonicalConfig` and its `Graph`."""
        return cls(cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.d_out or cfg.d_vocab,
                   bool(cfg.gated_mlp or cfg.n_experts), cfg.norm == "rmsnorm", cfg.positional == "rotary",
                   graph.n_senders, graph.n_receivers, graph.n_edges, param_bytes, block_params)


@dataclass(frozen=True)
class Work:
    """How a method's work is cut: b examples a pass out of n, p positions, and its options."""

    method: str
    batch: int
    examples: int
    positions: int
    steps: int = 5  # EAP-IG's passes
    max_masks: int = 32  # exact patching's masks a forward
    per_example: bool = False
    dtype_bytes: int = 4
    device_type: str = "cpu"
    store_dtype_bytes: int | None = None  # the ablated outputs' (the store's) dtype, when it differs (bf16 store)
    offload: bool = False  # the store lives off the device (store="cpu"|"disk"): one layer's columns on it


def saved_per_token(s: Shape) -> int:
    """Elements autograd keeps per token and layer in the clean pass with gradients (module docstring). The
    weights need no gradient, so a product with a weight keeps nothing of its input: what is kept are the
    inputs of the non-linear steps."""
    hd = s.n_heads * s.d_head
    attention = 3 * hd + (2 * hd if s.rotary else 0) + hd
    return 2 * s.d_model + attention + (3 if s.gated else 1) * s.d_mlp


def backward_top_per_token(s: Shape) -> int:
    """Elements per token the backward of one layer holds on top of the saved ones."""
    hd = s.n_heads * s.d_head
    return max(6 * hd + 2 * s.d_model, (3 if s.gated else 2) * s.d_mlp + 2 * s.d_model)


def forward_per_token(s: Shape, copies: int = 1) -> int:
    """Elements per token of one layer's working tensors in a forward without gradients."""
    hd = s.n_heads * s.d_head
    return copies * max(s.d_model + 5 * hd, (3 if s.gated else 2) * s.d_mlp + s.d_model)


def breakdown(s: Shape, w: Work) -> dict[str, int]:
    """Peak bytes by part: parameters, ablated outputs, store, gradients, method buffers."""
    if w.method not in METHODS_PLANNED:
        raise ValueError(w.method)
    E, f32 = w.dtype_bytes, 4
    SE = w.store_dtype_bytes or E
    b, p, d = w.batch, w.positions, s.d_model
    tokens, W = b * p, b * p * d
    S, R, hd = s.n_senders, s.n_receivers, s.n_heads * s.d_head
    n_parts = math.ceil(w.examples / b)
    logits = f32 * s.d_vocab * (w.examples + b)  # every batch's clean logits, kept from the start, and ∅'s
    scores = 4 * f32 * R * S  # the scores, the running sum over batches, the level's and EdgeScores' copies
    if w.per_example and not w.offload:  # (off the device with the store: `off_device`)
        scores += f32 * R * S * (w.examples + b)
    store_cols = s.d_model * tokens * SE
    ablated = S * store_cols
    parts = {"parameters": s.param_bytes, "ablated outputs": ablated, "store": 0, "gradients": 0,
             "method buffers": logits + scores}
    if w.method in GRADIENT_METHODS:
        grads = s.n_layers * saved_per_token(s) * tokens * E + d * tokens * E  # (the embedding's output)
        rows = max(1, GRAD_CHUNK_ELEMENTS // (3 * s.n_heads * d))  # token rows of a q|k|v gradient chunk
        chunk = 3 * s.n_heads * d * (rows if w.device_type != "cpu" else min(rows, tokens))  # (on CPU: as far as written)
        top = backward_top_per_token(s) * tokens * E + 2 * chunk * E + 3 * hd * d * E
        parts["gradients"] = grads + top
        if w.device_type == "cpu":  # glibc's heap (module docstring): one pass's blocks, two with several passes
            passes = 2 if w.method == "clean-corrupted" else w.steps if w.method == "eap-ig" else 1
            parts["allocator"] = grads * min(passes, 2)
        if w.method != "eap" and w.steps > 1 or w.method == "clean-corrupted":
            parts["method buffers"] += W * SE  # the input's ablated output, kept aside from D
            if w.device_type != "cpu":  # (an interpolated pass's store is reserved whole on an accelerator)
                parts["method buffers"] += (S - 1) * W * E
        if w.offload or SE != E:  # fetched from the store (off the device, or widened from its dtype): a layer's
            # columns in the forward (`Walk._abl`), then one chunk of D at a time in the backward (`_Scorer`,
            # float32 with a store dtype: STREAM_CHUNK_BYTES of the store's elements)
            wide = f32 if w.store_dtype_bytes else E
            staged = max((s.n_heads + 1) * d * tokens * E, min(S * d * tokens * wide, STREAM_CHUNK_BYTES * wide // SE))
            parts["method buffers"] += staged
        if w.offload:  # the store off the device (`off_device`)
            parts["ablated outputs"] = 0
            if w.method != "eap" and w.steps > 1 or w.method == "clean-corrupted":
                parts["method buffers"] -= W * SE  # (the input's ablated output is kept aside in the place too)
    else:
        parts["store"] = S * W * E
        if w.offload:  # the ablated outputs off the device, a layer's fetched as each walk reaches it
            parts["ablated outputs"] = 2 * (s.n_heads + 1) * d * tokens * E
        masks = CURVE_MASKS if w.method == "curve" else w.max_masks
        parts["method buffers"] += f32 * masks * R * S
        if w.method == "curve":  # one circuit a forward: receiver inputs [3H + 1, 1, W] and the layer's projections
            parts["method buffers"] += (3 * s.n_heads + 1) * W * E + 3 * hd * tokens * E * 3 + 3 * hd * d * E
            parts["method buffers"] += forward_per_token(s) * tokens * E
        else:  # k masks past the patched layer, each a copy of the layer's tensors: every head's D = z W_O − abl
            k = w.max_masks  # and the ablated outputs broadcast to the masks ([H, k, W] each, `Heads._heads`), z and
            # its head-major copy, the residual, base and the patched receivers' inputs, the per-mask store columns
            per_mask = 2 * s.n_heads * d + 4 * hd + 8 * d
            parts["method buffers"] += k * tokens * E * max(per_mask, (3 if s.gated else 2) * s.d_mlp + 8 * d)
    del n_parts
    return parts


def off_device(s: Shape, w: Work) -> int:
    """Bytes the run keeps off the device (store_on="cpu"|"disk"): the ablated outputs of a batch (D, for the
    gradient methods, written over them) and the per-example scores; 0 with the store on the device."""
    if not w.offload:
        return 0
    SE = w.store_dtype_bytes or w.dtype_bytes
    store = s.n_senders * w.batch * w.positions * s.d_model * SE
    if w.method in GRADIENT_METHODS and (w.method != "eap" and w.steps > 1 or w.method == "clean-corrupted"):
        store += w.batch * w.positions * s.d_model * SE  # the input's ablated output, kept aside
    examples = 4 * s.n_receivers * s.n_senders * (w.examples + w.batch) if w.per_example else 0
    return store + examples


def moved(s: Shape, w: Work) -> int:
    """Bytes a gradient method with its store off the device reads from it into the device (`Place.moved`), the
    whole task: the recording pass fetches each sender's ablated output once (S columns of b·p·d); each pass's
    backward reads, for a layer's q/k/v receivers, D of the 1 + l(H+1) senders before layer l, for its MLP H more,
    for the logits all S; each interpolated pass the input's ablated output (one column). 0 for the masked methods
    (each walk fetches the layers it computes: not planned) and with the store on the device."""
    if not w.offload or w.method not in GRADIENT_METHODS:
        return 0
    SE = w.store_dtype_bytes or w.dtype_bytes
    col = w.positions * s.d_model * SE  # one sender's column, per example
    H, L, S = s.n_heads, s.n_layers, s.n_senders
    passes = 2 if w.method == "clean-corrupted" else w.steps if w.method in ("eap-ig", "eap-ig-node") else 1
    backward = L * (2 + H) + (H + 1) * L * (L - 1) + S
    return (S + passes * backward + (passes - 1)) * col * w.examples


def forwards(s: Shape, w: Work) -> float:
    """The method's time in plain forwards of the whole task (matrix-product FLOPs)."""
    tokens = w.batch * w.positions
    forward = 2 * s.block_params * tokens + 4 * s.n_layers * s.n_heads * s.d_head * w.positions * tokens
    mixing = 2 * w.batch * w.positions * s.d_model * s.n_edges / forward  # Σ_edges one product of W a pass
    parts = math.ceil(w.examples / w.batch)
    if w.method in GRADIENT_METHODS:
        passes = 2 if w.method == "clean-corrupted" else w.steps if w.method in ("eap-ig", "eap-ig-node") else 1
        per_batch = 2 + passes * (3 + mixing)  # the clean and ablated runs, then forward + backward + scoring
    elif w.method == "curve":
        per_batch = 2 + CURVE_MASKS * (1 + mixing)
    else:  # each edge a forward of the layers from its receiver's on: about half a forward each
        per_batch = 2 + s.n_edges * 0.5
    return per_batch * parts * w.batch / w.examples  # in forwards of the whole task (the last batch may be short)
