"""Selection strategies over extracted gradients and losses."""

from __future__ import annotations

import torch

from ..config import STRATEGIES, UserError
from ..gradients import Gradients
from . import baselines
from .greedy import greedy
from .result import Selection

__all__ = ["Selection", "greedy", "run_strategy", "needs_gradients", "STRATEGIES"]


def run_strategy(
    name: str,
    k: int,
    grads: Gradients | None = None,
    labels: torch.Tensor | None = None,
    loss_ft: torch.Tensor | None = None,
    loss_base: torch.Tensor | None = None,
    seed: int = 0,
    reset_every: int | None = None,
    n: int | None = None,
    progress: bool = False,
    greedy_method: str = "exact",
    epsilon: float = 0.01,
    device: torch.device | str | None = None,
) -> Selection:
    """Run one strategy of method.md; inputs a strategy does not use may be None.

    `greedy_method` (exact / lazy / stochastic), `epsilon` and `device` apply to the greedy."""
    if name == "random":
        return baselines.random(n if n is not None else len(loss_ft), k, seed)
    if name in ("select", "select-batched"):
        every = None if name == "select" else (reset_every or max(1, k // 10))
        return greedy(grads.grads, grads.align, grads.sqnorm, grads.target_norm, k, every, progress,
                      method=greedy_method, epsilon=epsilon, seed=seed, device=device)
    if name == "topk":
        return baselines.topk(grads.cosines().numpy(), k)
    if name == "topk-balanced":
        if labels is None:
            raise UserError("topk-balanced needs autolabels: use it with a classification task")
        return baselines.topk_balanced(grads.cosines().numpy(), labels.numpy(), k)
    if name == "loss-min":
        return baselines.loss_min(loss_ft.numpy(), k)
    if name == "loss-max":
        return baselines.loss_max(loss_ft.numpy(), k)
    if name == "loss-diff":
        return baselines.loss_diff(loss_ft.numpy(), loss_base.numpy(), k)
    raise UserError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")


def needs_gradients(strategies: list[str]) -> bool:
    return any(s in ("select", "select-batched", "topk", "topk-balanced") for s in strategies)

