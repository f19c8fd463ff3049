"""What the explorer's prompt and contrast views compute, each a plain function of (model, request) → JSON-ready
dict, checked before any work: the prompt's prediction and token-by-layer graph, a residual state's logit lens, an
MLP's top neurons, "why A not B", an intervention's new top-k and generation (zero, scale or steer; SAE latents), and
a Patchscope from any residual state or a head's or an MLP's output."""

from __future__ import annotations

import math

import torch
from torch import Tensor

import circuitfind.inspect as ci
from circuitfind.errors import ConfigError
from circuitfind.inspect.common import parse_node, position_in, ranked_tokens, token_str, tokens_of
from circuitfind.inspect.interventions import hooks_for

TAU_MIN = 0.02  # the graph is sent at this τ; the page's slider re-prunes it at any τ above (as ci.flow would)
MAX_NEW_TOKENS = 40


def prompt_tokens(model, prompt) -> Tensor:
    """A prompt typed into the page → tokens [1, pos], refusing an empty prompt or one past the model's context."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError("the prompt is empty: type some text to run the model on")
    tokens = tokens_of(model, prompt)
    if tokens.shape[-1] > model.cfg.n_ctx:
        raise ConfigError(f"the prompt is {tokens.shape[-1]} tokens, past {model.name}'s context of "
                          f"{model.cfg.n_ctx}: shorten it")
    return tokens.to(model.device)


def _top(model, logits: Tensor, k: int) -> list[list]:
    """The k most probable next tokens of logits [vocab] as [token, probability, logit]."""
    probs = logits.float().softmax(-1)
    top = probs.topk(min(k, probs.shape[-1]))
    return [[token_str(model, int(i), output=True), round(float(p), 5), round(float(logits[i]), 4)]
            for p, i in zip(top.values, top.indices)]


@torch.no_grad()
def analyse(model, prompt, k: int = 10) -> dict:
    """The prediction at the last position, its top-k, and the token-by-layer graph at τ = TAU_MIN (one flow
    pass: the prediction is read off the final residual state that pass computes)."""
    tokens = prompt_tokens(model, prompt)
    final = {}
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    with model.hooks([(last, lambda x, name: final.__setitem__("resid", x[0, -1]))]):
        graph = ci.flow(model, tokens, tau=TAU_MIN)
    logits = model.unembed(final["resid"], wide=True)  # [vocab]
    return {"tokens": graph.tokens, "ids": tokens[0].tolist(), "top": _top(model, logits, k),
            "flow": graph.to_dict()}


def _lens_rows(model, logits: Tensor, k: int) -> dict:
    up, down = ranked_tokens(model, logits - logits.mean(-1, keepdim=True), k)
    return {"promoted": [[w, round(v, 4)] for w, v in up], "suppressed": [[w, round(v, 4)] for w, v in down]}


@torch.no_grad()
def state(model, prompt, row: int, token: int, k: int = 5) -> dict:
    """The logit lens of residual state (row, token) of the graph: row 2l is the stream entering layer l
    (`ci.logit_lens(model, prompt, "resid:l")`, exactly), row 2l + 1 the stream after layer l's attention, read
    the same way (through the final norm and the unembedding, centred over the vocabulary)."""
    tokens = prompt_tokens(model, prompt)
    R = 2 * model.cfg.n_layers + 1
    if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < R:
        raise ConfigError(f"row {row!r} is not a row of the graph (0..{R - 1})")
    token = position_in(token, tokens.shape[-1], "token")
    if row % 2 == 0:
        lens = ci.logit_lens(model, tokens, f"resid:{row // 2}", k)[token]
        out = {"promoted": [[w, round(v, 4)] for w, v in lens.promoted],
               "suppressed": [[w, round(v, 4)] for w, v in lens.suppressed]}
    else:
        name = f"blocks.{row // 2}.hook_resid_mid"
        _, cache = model.run_with_cache(tokens, names_filter=[name])
        out = _lens_rows(model, model.unembed(cache[name][0, token]), k)
    where = "the embeddings" if row == 0 else (f"after layer {row // 2}'s attention" if row % 2
                                               else f"after layer {row // 2 - 1}'s FFN")
    return {"row": row, "token": token, "text": token_str(model, int(tokens[0, token])), "where": where, **out}


@torch.no_grad()
def neurons(model, prompt, layer: int, token: int = -1, n: int = 10, k: int = 5) -> dict:
    """MLP `m{layer}` at a token: its n neurons of largest |contribution| to the prediction's logit there (the
    neuron's activation times its output direction, read through the final norm with its scale frozen), each with
    the tokens its output direction promotes (through the unembedding)."""
    cfg = model.cfg
    if cfg.n_experts or cfg.post_norms:
        raise ConfigError(f"{model.name}'s MLP output is not a sum over neurons (experts or a post-norm): the "
                          "neuron view needs a dense MLP")
    parse_node(model, f"m{layer}")
    tokens = prompt_tokens(model, prompt)
    token = position_in(token, tokens.shape[-1], "token")
    post_name, last = f"blocks.{layer}.mlp.hook_post", f"blocks.{cfg.n_layers - 1}.hook_resid_post"
    _, cache = model.run_with_cache(tokens, names_filter=[post_name, last])
    post = cache[post_name][0, token].float()  # [d_mlp]
    resid = cache[last][0, token].float()  # [d]: the final norm's statistics at this token
    W_out = model.blocks[layer].mlp.w_out.float()  # [d_mlp, d]
    predicted = int(model.unembed(cache[last][0, token], wide=True).argmax())
    norm = model.ln_final
    if norm.kind == "layernorm":
        direction = (W_out - W_out.mean(-1, keepdim=True)) / (resid.var(unbiased=False) + norm.eps).sqrt() * norm.w
    elif norm.kind == "rmsnorm":
        direction = W_out / (resid.pow(2).mean() + norm.eps).sqrt() * (norm.offset + norm.w)
    else:
        direction = W_out
    contribution = post * (direction @ model.W_U[:, predicted].float())  # [d_mlp]
    order = contribution.abs().argsort(descending=True)[:n]
    rows = []
    for i in order.tolist():
        up, _ = ranked_tokens(model, W_out[i] @ model.W_U.float(), k)
        rows.append({"neuron": f"m{layer}.n{i}", "activation": round(float(post[i]), 4),
                     "contribution": round(float(contribution[i]), 4), "promotes": [w for w, _ in up]})
    return {"node": f"m{layer}", "token": token, "predicted": token_str(model, predicted, output=True),
            "neurons": rows}


@torch.no_grad()
def contrast(model, prompt, a: str | None = None, b: str | None = None) -> dict:
    """`ci.why` at the last position: the direct and total effect of every node on logit(A) − logit(B)."""
    tokens = prompt_tokens(model, prompt)
    c = ci.why(model, tokens, a or None, b or None)
    return {"a": token_str(model, c.a, output=True), "b": token_str(model, c.b, output=True),
            "logit_diff": c.logit_diff, "constant": c.constant,
            "nodes": [{"node": r.node, "direct": r.direct, "total": r.total} for r in c.nodes]}


def _number(value, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number; got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{what} must be a finite number; got {value!r}")
    return number


def _is_neuron(model, node: str) -> bool:
    return not node.startswith("resid:") and parse_node(model, node)[0] == "neuron"


def intervention(model, node: str, kind: str = "zero", value=None, toward=None, away=None,
                 sae=None) -> tuple[ci.Intervention, str]:
    """The page's intervention as the `ci.Intervention` it stands for, and its description. zero and scale (by a
    factor) take a head, an MLP, a neuron or an SAE latent `sae:i`; steer takes those and `resid:L`: a head, an
    MLP or the stream get coefficient × `ci.token_direction(model, toward, away)` added to their output, a neuron
    or a latent the coefficient added to its activation."""
    if kind not in ("zero", "scale", "steer"):
        raise ConfigError(f"the page intervenes by 'zero', 'scale' or 'steer'; got {kind!r}")
    node = (node or "").strip()
    if node.startswith("sae:"):
        if sae is None:
            raise ConfigError(f"{node!r} is an SAE latent, but no SAE is loaded for {model.name}: start the server "
                              f"with --sae {model.name}=PATH (a safetensors file with W_enc, b_enc, W_dec, b_dec)")
    elif node == "input":
        raise ConfigError("'input': the page intervenes on a head (a1.h2), an MLP (m0), a neuron (m0.n17), an SAE "
                          "latent (sae:12), or steers the residual stream (resid:2)")
    elif node.startswith("resid:"):
        if kind != "steer":
            raise ConfigError(f"{node!r}: the residual stream is steered, not zeroed or scaled (that would remove "
                              "what every earlier node wrote); zero or scale a head, an MLP, a neuron or a latent")
    else:
        parse_node(model, node)  # names a node that exists, or says which do
    if kind == "zero":
        return ci.Intervention(node, "zero", sae=sae), f"{node} zeroed"
    if kind == "scale":
        factor = _number(value, "a scale's factor")
        return ci.Intervention(node, "scale", factor, sae=sae), f"{node} scaled × {factor:g}"
    coefficient = _number(value, "a steer's coefficient")
    one_number = "latent" if node.startswith("sae:") else "neuron" if _is_neuron(model, node) else None
    if one_number:
        return (ci.Intervention(node, "steer", coefficient, sae=sae),
                f"{node} steered: {coefficient:+g} added to the {one_number}'s activation")
    if not isinstance(toward, str) or toward == "":  # (a token keeps its leading space: " Paris")
        raise ConfigError(f"steering {node} adds coefficient × the direction toward a token: give the token to steer "
                          "toward (and, if you like, one to steer away from)")
    away = away if isinstance(away, str) and away != "" else None
    direction = ci.token_direction(model, toward, away)
    said = f"toward {toward!r}" + ("" if away is None else f", away from {away!r}")
    return (ci.Intervention(node, "steer", coefficient * direction, sae=sae),
            f"{node} steered {said}: {coefficient:+g} × ci.token_direction")


@torch.no_grad()
def intervene(model, prompt, node: str, kind: str = "zero", value=None, new_tokens: int = 8, k: int = 5, *,
              toward=None, away=None, sae=None) -> dict:
    """The top-k next tokens and a greedy continuation with and without the intervention (`ci.compare`)."""
    tokens = prompt_tokens(model, prompt)
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or not 1 <= new_tokens <= MAX_NEW_TOKENS:
        raise ConfigError(f"tokens to generate: 1..{MAX_NEW_TOKENS}; got {new_tokens!r}")
    iv, what = intervention(model, node, kind, value, toward, away, sae)
    hooks = hooks_for(model, [iv])  # (checks the latent, the vector, the node's layer)
    before = model(tokens)[0, -1]
    with model.hooks(hooks):
        after = model(tokens)[0, -1]
    generated = ci.compare(model, tokens, [iv], new_tokens)

    def text(g):
        return g if isinstance(g, str) else " ".join(token_str(model, t) for t in g)
    return {"node": iv.node, "kind": kind, "what": what, "top_before": _top(model, before, k),
            "top_after": _top(model, after, k), "baseline": text(generated["baseline"]),
            "intervened": text(generated["intervened"])}


MAX_EXAMPLES = 200


@torch.no_grad()
def examples(model, node: str, task: str, n: int = 40, k: int = 5) -> dict:
    """The k top-activating examples of a neuron (or head, or MLP) over the clean prompts of a built-in task
    (`ci.top_activations`), each as its context with the token in [brackets]."""
    from circuitfind.task import load_task

    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_EXAMPLES:
        raise ConfigError(f"examples to search: 1..{MAX_EXAMPLES}; got {n!r}")
    parse_node(model, (node or "").strip())
    top = ci.top_activations(model, load_task(str(task), n=n, seed=0), node.strip(), k=k)
    return {"node": node.strip(), "task": task,
            "examples": [{"context": a.context, "token": a.token, "value": round(a.value, 4)} for a in top]}


def state_name(model, row: int) -> str:
    """The graph's row as a residual state's name: row 2l is `resid:l` (the stream entering layer l; row 0 the
    embeddings, row 2L the stream entering the final norm), row 2l + 1 is `resid_mid:l` (after layer l's attention)."""
    R = 2 * model.cfg.n_layers + 1
    if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < R:
        raise ConfigError(f"row {row!r} is not a row of the graph (0..{R - 1})")
    return f"resid:{row // 2}" if row % 2 == 0 else f"resid_mid:{row // 2}"


def _stream_words(model, hook: str) -> str:
    """A residual hook as the page says it."""
    layer, _, name = hook[len("blocks."):].partition(".")
    return {"hook_resid_pre": f"the stream entering layer {layer}", "hook_resid_mid": f"the stream after layer "
            f"{layer}'s attention", "hook_resid_post": f"the stream after layer {layer}"}[name]


@torch.no_grad()
def patchscope(model, prompt, source: str, token: int = -1, target: str = ci.IDENTITY_PROMPT,
               new_tokens: int = 5) -> dict:
    """A Patchscope from `source` at a token — a residual state (resid:L, resid_mid:L, input) or a head's or an
    MLP's output (a1.h2, m0) — patched into the last position of the target prompt where it sits in the stream,
    and what the model then says (`ci.patchscope(model, prompt, source, ...)`)."""
    from circuitfind.inspect.patchscope import source_site

    tokens = prompt_tokens(model, prompt)
    source = source.strip() if isinstance(source, str) else source
    if not isinstance(source, str) or not source:
        raise ConfigError("a Patchscope needs a source: a state (resid:2, resid_mid:1, input) or a node (a1.h2, m0)")
    token = position_in(token, tokens.shape[-1], "token")
    _, _, lands = source_site(model, source)  # (refuses a neuron, or a name that is no state or node, by name)
    target = target if isinstance(target, str) and target.strip() else ci.IDENTITY_PROMPT
    if not isinstance(new_tokens, int) or isinstance(new_tokens, bool) or not 1 <= new_tokens <= MAX_NEW_TOKENS:
        raise ConfigError(f"tokens to generate: 1..{MAX_NEW_TOKENS}; got {new_tokens!r}")
    said = ci.patchscope(model, tokens, source, source_position=token, target_prompt=target,
                         max_new_tokens=new_tokens)
    return {"source": source, "token": token, "text": token_str(model, int(tokens[0, token])), "target": target,
            "into": _stream_words(model, lands),
            "said": said if isinstance(said, str) else " ".join(token_str(model, t) for t in said)}
