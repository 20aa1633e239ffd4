"""Selection strategies over extracted gradients and losses."""

from __future__ import annotations

import numpy as np
import torch

from ..config import STRATEGIES, UserError
from ..gradients import Gradients
from . import baselines
from .greedy import greedy
from .result import Selection

__all__ = ["Selection", "greedy", "run_strategy", "needs_gradients", "confident_rows", "STRATEGIES"]


def confident_rows(loss_finetuned: np.ndarray, labels: np.ndarray, quantile: float) -> np.ndarray:
    """(N,) bool: within each autolabel, the ⌈(1 − quantile) · n_c⌉ rows θf is surest of,
    i.e. with the lowest loss at θf (ties to the lower row). A per-class cut drops uncertain
    labels without ever emptying a class, which a single threshold does on a task with rare
    or hard classes. Ranked by the loss itself: θf's probability exp(−loss) rounds the surest
    documents (losses near 0) to equal float32 values, and the order among them is lost."""
    if not 0 <= quantile < 1:
        raise ValueError(f"quantile must be in [0, 1), got {quantile}")
    keep = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        order = rows[np.argsort(loss_finetuned[rows], kind="stable")]
        keep[order[: int(np.ceil((1 - quantile) * len(rows)))]] = True
    return keep


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
    eligible: np.ndarray | None = None,
) -> Selection:
    """Run one strategy of method.md; inputs a strategy does not use may be None.

    `greedy_method` (exact / stochastic), `epsilon` and `device` apply to the greedy.
    `eligible` (N,) bool restricts every strategy to those rows; indices stay corpus rows."""
    if n is None:
        n = grads.grads.shape[1] if grads is not None else len(loss_ft)
    keep = np.arange(n) if eligible is None else np.flatnonzero(eligible)
    if eligible is not None and len(keep) < k:
        raise UserError(f"only {len(keep)} documents are eligible (--confidence-quantile), "
                        f"fewer than --k {k}")
    if name in ("select", "select-batched"):
        every = None if name == "select" else (reset_every or max(1, k // 10))
        exclude = None if eligible is None else torch.from_numpy(~np.asarray(eligible, bool))
        return greedy(grads.grads, grads.align, grads.sqnorm, grads.target_norm, k, every, progress,
                      method=greedy_method, epsilon=epsilon, seed=seed, device=device,
                      exclude=exclude)

    def sub(t: torch.Tensor) -> np.ndarray:
        return t.numpy()[keep]

    if name == "random":
        picked = baselines.random(len(keep), k, seed)
    elif name == "topk":
        picked = baselines.topk(sub(grads.cosines()), k)
    elif name == "topk-balanced":
        if labels is None:
            raise UserError("topk-balanced needs autolabels: use it with a classification task")
        picked = baselines.topk_balanced(sub(grads.cosines()), sub(labels), k)
    elif name == "loss-min":
        picked = baselines.loss_min(sub(loss_ft), k)
    elif name == "loss-max":
        picked = baselines.loss_max(sub(loss_ft), k)
    elif name == "loss-diff":
        picked = baselines.loss_diff(sub(loss_ft), sub(loss_base), k)
    else:
        raise UserError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    picked.indices = keep[picked.indices].tolist()
    return picked


def needs_gradients(strategies: list[str]) -> bool:
    return any(s in ("select", "select-batched", "topk", "topk-balanced") for s in strategies)

