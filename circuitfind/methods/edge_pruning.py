"""Edge Pruning (Bhaskar et al. 2024, arXiv:2406.16778): learn a hard-concrete gate per edge.

Each edge (and, optionally, each sender node) has a gate z ∈ [0, 1] drawn from a hard-concrete
distribution with a learned location log α (Louizos et al. 2018). A training step samples the gates,
runs the engine's masked forward with them as the edge mask (z = 1 keeps the edge, z = 0 ablates it)
and minimises

    loss = objective(masked run) + λ₁ (s − t) + λ₂ (s − t)²

where s is the expected fraction of edges removed, t the target sparsity (raised linearly from 0 to
`sparsity` over the first `warmup` of the steps), and λ₁, λ₂ are Lagrange multipliers trained by
gradient *ascent*, so the constraint s = t is enforced rather than merely encouraged. The objective
is the task's divergence from the full model's output (`Task.divergence`): the KL divergence of its
output distribution (the paper's default), or l2 for a numerical output such as tracr-xproportion's,
whose one logit has no distribution; or, with objective="task", the task's own metric.

Scores are σ(log α), the probability-like keep score of each edge: monotone in the mask logits and
positive, so signed and absolute rankings agree. The learned circuit at the target sparsity is
`prune(scores, edges=round((1 − sparsity) · n_edges))`; thresholding σ(log α) at 0.5 keeps somewhat
fewer, because gates that are nearly closed still count a little toward the expected L0 the
constraint holds. The masked forward and its backward are the whole cost of a step.

Warm start (`init="eap-ig"`, any method's name; the shared task's "sequential ensembling", Mondorf et al.
2025): that method's top round((1 − sparsity) · n_edges) edges by |score| start open (logit +3), the rest
nearly shut (logit −3), and the target sparsity holds from the first step (the start is already there, so no
warm-up reopens it); training then corrects the method's circuit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitfind.engine.patching import masked_forward
from circuitfind.errors import ConfigError
from circuitfind.methods.common import divergence_of, prepare, refuse_constant_metric
from circuitfind.metrics import resolve_metric

# Hard-concrete stretch interval (γ, ζ) and temperature β, as in Louizos et al. 2018.
GAMMA, ZETA, BETA = -0.1, 1.1, 2.0 / 3.0


@dataclass(frozen=True)
class EdgePruningConfig:
    sparsity: float = 0.9  # target fraction of edges removed
    steps: int = 400
    lr: float = 0.1  # Adam learning rate of the mask logits
    lambda_lr: float = 0.1  # learning rate of the Lagrange multipliers (ascent)
    warmup: float = 0.5  # fraction of the steps over which the target rises from 0 to `sparsity`
    init: float | str = 3.0  # initial mask logit (every gate almost surely open), or a method to warm-start from
    node_masks: bool = False  # also learn one gate per sender (multiplying its out-edges' gates)
    # the task's divergence from the full model (KL, or l2 for a numerical output), "kl", "l2", or "task" (its metric)
    objective: Literal["divergence", "kl", "l2", "task"] = "divergence"

    def __post_init__(self):
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"sparsity is the fraction of edges removed, in [0, 1); got {self.sparsity!r}")
        if self.steps < 1 or self.lr <= 0 or self.lambda_lr <= 0:
            raise ConfigError("steps must be ≥ 1 and the learning rates positive")
        if not 0.0 <= self.warmup <= 1.0:
            raise ConfigError(f"warmup is a fraction of the steps, in [0, 1]; got {self.warmup!r}")
        if self.objective not in ("divergence", "kl", "l2", "task"):
            raise ConfigError(f"objective must be 'divergence', 'kl', 'l2' or 'task', got {self.objective!r}")
        if self.init == "edge-pruning":
            raise ConfigError("edge pruning cannot warm-start from itself; name another method, e.g. init=eap-ig")


WARM = 3.0  # |initial logit| of a warm start: open gates P(z > 0) ≈ 0.99, shut ones ≈ 0.2


def initial_logits(model, task, cfg: EdgePruningConfig, ablation: str, seed: int) -> Tensor:
    """[dst, src]: cfg.init everywhere, or ±WARM by whether an edge is among the warm-start method's top
    round((1 − sparsity) · n_edges) by |score|."""
    g = model.graph
    if not isinstance(cfg.init, str):
        return torch.full((g.n_receivers, g.n_senders), float(cfg.init), device=model.device)
    from circuitfind.methods import score_edges  # the registry holds this module

    warm = score_edges(model, task, cfg.init, ablation, seed=seed).scores
    key = warm.abs().masked_fill(~g.edge_mask, float("-inf")).flatten()
    top = torch.zeros(key.numel(), dtype=torch.bool)
    top[torch.topk(key, round((1 - cfg.sparsity) * g.n_edges)).indices] = True
    top = top.view(g.n_receivers, g.n_senders).to(model.device)
    return torch.where(top, WARM, -WARM).to(torch.float32)


def sample_gates(log_alpha: Tensor, generator: torch.Generator | None) -> Tensor:
    """A reparameterised hard-concrete sample z ∈ [0, 1] per entry of log_alpha."""
    u = torch.rand(log_alpha.shape, generator=generator, device=log_alpha.device).clamp(1e-6, 1 - 1e-6)
    s = torch.sigmoid((u.log() - (-u).log1p() + log_alpha) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def keep_probability(log_alpha: Tensor) -> Tensor:
    """P(z > 0) of each hard-concrete gate: its expected contribution to the L0 norm."""
    return torch.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA))


def score(model, task, cfg: EdgePruningConfig, ablation: str = "corrupted", seed: int = 0, quiet: bool = True):
    from circuitfind.methods import METHODS  # (the registry holds this module)

    if isinstance(cfg.init, str) and cfg.init not in METHODS:
        raise ConfigError(f"init={cfg.init!r} is neither a logit nor a method; methods: {', '.join(METHODS)}")
    setup = prepare(model, task, ablation, seed)
    g = model.graph
    edges = g.edge_mask.to(model.device)
    kind = divergence_of(cfg.objective, task)
    metric = setup.metric if kind == "task" else resolve_metric(kind)
    refuse_constant_metric(model, setup, metric, f"edge pruning (objective {kind!r})",
                           "Use --option objective=task (the task's own metric), or objective=l2 for a numerical "
                           "output", seed)
    if kind == "task":  # lower is better for the optimiser
        objective = lambda logits: -setup.sign * setup.objective(logits)  # noqa: E731
    else:
        objective = lambda logits: metric(logits, setup.targets).mean()  # noqa: E731

    generator = torch.Generator(device=model.device).manual_seed(seed)
    edge_logits = initial_logits(model, task, cfg, ablation, seed).requires_grad_(True)
    node_logits = torch.full((g.n_senders,), WARM if isinstance(cfg.init, str) else float(cfg.init),
                             device=model.device, requires_grad=cfg.node_masks)
    warmup = 0.0 if isinstance(cfg.init, str) else cfg.warmup  # a warm start begins at the target
    params = [edge_logits] + ([node_logits] if cfg.node_masks else [])
    lambdas = torch.zeros(2, device=model.device, requires_grad=True)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    opt_lambda = torch.optim.Adam([lambdas], lr=cfg.lambda_lr, maximize=True)
    n_edges = edges.sum()
    frozen = [p.requires_grad_(False) for p in model.parameters() if p.requires_grad]

    bar = tqdm(range(cfg.steps), desc="edge pruning", unit="step", disable=quiet)
    try:
        for step in bar:
            gates = sample_gates(edge_logits, generator)
            keep = keep_probability(edge_logits)
            if cfg.node_masks:
                gates = gates * sample_gates(node_logits, generator)[None, :]
                keep = keep * keep_probability(node_logits)[None, :]
            mask = torch.where(edges, gates, torch.ones_like(gates))
            logits = masked_forward(model, setup.batch.clean, setup.ablated, mask.to(model.dtype), shared=setup.shared)
            loss_task = objective(logits.float())
            sparsity = 1 - (keep * edges).sum() / n_edges
            target = cfg.sparsity * min(1.0, (step + 1) / max(1.0, warmup * cfg.steps))
            gap = sparsity - target
            loss = loss_task + lambdas[0] * gap + lambdas[1] * gap**2
            opt.zero_grad()
            opt_lambda.zero_grad()
            loss.backward()
            opt.step()
            opt_lambda.step()
            bar.set_postfix(sparsity=f"{sparsity.item():.3f}", target=f"{target:.3f}", objective=f"{loss_task.item():.4f}")
    finally:
        for p in frozen:
            p.requires_grad_(True)

    with torch.no_grad():
        final = torch.sigmoid(edge_logits)
        if cfg.node_masks:
            final = final * torch.sigmoid(node_logits)[None, :]
    return final.detach() * edges
