"""Metrics: what a circuit must preserve, as a number per example.

A metric is `fn(logits, targets) -> Tensor[batch]`, with logits [batch, vocab] at each example's
answer position and `targets` carrying the answer token ids (`correct`, `wrong`: [batch, n], padded
with -1) and, for KL, the clean model's logits (`clean_logits`). Built-ins:

    logit-diff   mean logit of the correct answers − mean logit of the wrong ones   (higher = better)
    prob-diff    total probability of correct answers − of wrong ones               (higher = better)
    kl           KL(clean ‖ current) of the next-token distribution                  (lower = better)
    l2           ‖current − clean‖² of the output logits (a numerical output's KL)  (lower = better)
    ce           cross-entropy of the first correct answer                           (lower = better)

`kl` and `l2` are divergences from the clean run: what ACDC and edge pruning minimise by default
(`Task.divergence` says which suits a task's output; ACDC's own code takes L2 on tracr's numerical one).

Any callable with the same signature works (e.g. a squared error for numerical tracr outputs).
A metric that goes NaN because the model's activations did is explained by `non_finite_message`: the
first node of the forward that went non-finite, and the dtype to use instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from circuitfind.errors import MetricError

Metric = Callable[[Tensor, "Targets"], Tensor]


@dataclass(frozen=True)
class Targets:
    correct: Tensor  # [batch, n_correct] long, -1 = padding
    wrong: Tensor  # [batch, n_wrong] long, -1 = padding
    clean_logits: Tensor | None = None  # [batch, vocab], for KL
    values: Tensor | None = None  # [batch] float, for numerical tasks

    def with_clean(self, clean_logits: Tensor) -> "Targets":
        return Targets(self.correct, self.wrong, clean_logits.detach(), self.values)

    def rows(self, s: slice) -> "Targets":
        """The targets of the examples s (a slice of the batch)."""
        part = lambda t: None if t is None else t[s]  # noqa: E731
        return Targets(self.correct[s], self.wrong[s], part(self.clean_logits), part(self.values))

    def repeat(self, k: int) -> "Targets":
        """The targets of k copies of the batch (k masks evaluated at once), [k·batch, ...]."""
        rep = lambda t: None if t is None else t.repeat(k, *([1] * (t.ndim - 1)))  # noqa: E731
        return Targets(rep(self.correct), rep(self.wrong), rep(self.clean_logits), rep(self.values))


def _mean_at(x: Tensor, ids: Tensor) -> Tensor:
    """Mean of x [batch, vocab] over the valid ids [batch, n] of each row → [batch]."""
    valid = ids >= 0
    picked = x.gather(-1, ids.clamp(min=0)) * valid
    return picked.sum(-1) / valid.sum(-1).clamp(min=1)


def logit_diff(logits: Tensor, t: Targets) -> Tensor:
    return _mean_at(logits, t.correct) - _mean_at(logits, t.wrong)


def prob_diff(logits: Tensor, t: Targets) -> Tensor:
    probs = logits.softmax(-1)
    valid_c, valid_w = t.correct >= 0, t.wrong >= 0
    return (probs.gather(-1, t.correct.clamp(min=0)) * valid_c).sum(-1) - (probs.gather(-1, t.wrong.clamp(min=0)) * valid_w).sum(-1)


def kl(logits: Tensor, t: Targets) -> Tensor:
    """KL(clean ‖ run) per example: logits [..., batch, vocab] (several runs of the batch broadcast) → [..., batch]."""
    if t.clean_logits is None:
        raise MetricError("the kl metric needs the clean model's logits (targets.with_clean(...))")
    ref = t.clean_logits.log_softmax(-1)
    return (ref.exp() * (ref - logits.log_softmax(-1))).sum(-1)


def l2(logits: Tensor, t: Targets) -> Tensor:
    """‖run − clean‖² of the output logits per example: logits [..., batch, out] → [..., batch]."""
    if t.clean_logits is None:
        raise MetricError("the l2 metric needs the clean model's logits (targets.with_clean(...))")
    return ((logits - t.clean_logits) ** 2).sum(-1)


def cross_entropy(logits: Tensor, t: Targets) -> Tensor:
    return -logits.log_softmax(-1).gather(-1, t.correct[:, :1].clamp(min=0))[:, 0]


METRICS: dict[str, Metric] = {"logit-diff": logit_diff, "prob-diff": prob_diff, "kl": kl, "l2": l2, "ce": cross_entropy}
HIGHER_IS_BETTER = {"logit-diff": True, "prob-diff": True, "kl": False, "l2": False, "ce": False}
DIVERGENCES = ("kl", "l2")  # from the clean run: what Task.divergence may name


def resolve_metric(metric: str | Metric) -> Metric:
    if callable(metric):
        return metric
    if metric not in METRICS:
        raise MetricError(f"unknown metric {metric!r}; built-ins: {', '.join(METRICS)} (or pass a callable "
                          "fn(logits [batch, vocab], targets) -> [batch])")
    return METRICS[metric]


def checked(values: Tensor, batch: int, name: str = "metric") -> Tensor:
    """Raise a MetricError unless values is a finite tensor of shape [batch]."""
    if not isinstance(values, Tensor) or values.shape != (batch,):
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise MetricError(f"{name} must return one value per example, shape ({batch},); got {shape}")
    if not torch.isfinite(values).all():
        raise MetricError(f"{name} returned NaN or infinity on {int((~torch.isfinite(values)).sum())} of {batch} "
                          "examples; check the answer ids and the metric")
    return values


# ---------------------------------------------------------------------- non-finite activations
def _forward_order(model) -> list[tuple[str, str]]:
    """(hook name, what it is) for every activation of the plain forward, in the order it computes them."""
    names = set(model.hook_names())
    order = [("hook_embed", "input (the token embeddings)"), ("hook_pos_embed", "input (the position embeddings)")]
    for l in range(model.cfg.n_layers):
        b = f"blocks.{l}"
        order += [(f"{b}.attn.hook_{x}", f"a{l}.h{{h}} (its {what})")
                  for x, what in (("q", "query"), ("k", "key"), ("v", "value"), ("z", "attention output"))]
        order += [(f"{b}.hook_attn_out", f"the attention output of layer {l}"),
                  (f"{b}.hook_resid_mid", f"the residual stream after a{l}"), (f"{b}.mlp.hook_pre", f"m{l} (its input)"),
                  (f"{b}.mlp.hook_post", f"m{l} (its hidden activations)"), (f"{b}.hook_mlp_out", f"m{l} (its output)"),
                  (f"{b}.hook_resid_post", f"the residual stream after layer {l}")]
    order.append(("ln_final.hook_normalized", "the final norm"))
    return [(n, what) for n, what in order if n in names]


def non_finite_node(model, inputs) -> str | None:
    """The first activation of the forward on inputs (at real positions) that holds NaN or inf, named as a node
    (`a1.h3 (its query)`, `m0 (its output)`, ...); "the logits" if only they do; None if none does."""
    order = _forward_order(model)
    real = inputs.attention_mask.bool()
    with torch.no_grad():
        logits, cache = model.run_with_cache(inputs.tokens, inputs.attention_mask, names_filter=[n for n, _ in order])
    for name, what in order:
        x = cache[name][real]  # [n real positions, ...]
        if bool(x.isfinite().all()):
            continue
        if "{h}" in what:  # per head: [positions, head, d_head]
            head = int((~x.isfinite()).flatten(2).any(-1).any(0).nonzero()[0])
            what = what.format(h=head)
        return f"{what}, at hook {name}"
    return None if bool(logits[real].isfinite().all()) else "the logits (the unembedding)"


def non_finite_message(model, inputs, on: str) -> str:
    """Why a run went NaN or infinite, for an error: the first node it did at, and what to do (the dtype)."""
    node = non_finite_node(model, inputs)
    dtype = str(model.dtype).removeprefix("torch.")
    where = f"first at {node}" if node else "(at no activation of the plain forward: in a patched run)"
    advice = ("float16 overflows here: load the model in bfloat16 or float32 (dtype='bfloat16', --dtype bfloat16)"
              if dtype == "float16" else
              "check the model's weights for inf or NaN" + ("" if dtype == "float32" else
                                                           "; or load it in float32 (--dtype float32)"))
    return (f"the model's activations on {on} went NaN or infinite in {dtype}, {where}; the task and its metric "
            f"are not at fault: {advice}")
