"""Baselines: top-k by cosine (plain and label-balanced), random, and loss-based picks."""

from __future__ import annotations

import numpy as np

from .result import Selection


def _top(values: np.ndarray, k: int) -> list[int]:
    """Rows of the k largest values, ties to the lower row (stable)."""
    return np.argsort(-values, kind="stable")[:k].tolist()


def topk(cos: np.ndarray, k: int) -> Selection:
    idx = _top(cos, k)
    return Selection("topk", idx, cos[idx].tolist())


def topk_balanced(cos: np.ndarray, labels: np.ndarray, k: int) -> Selection:
    """Top-k with an equal quota per autolabel: best of each label in turn, round by round;
    a label that runs out leaves its share to the others."""
    queues = [_top(np.where(labels == c, cos, -np.inf), int((labels == c).sum()))
              for c in np.unique(labels)]
    idx: list[int] = []
    depth = 0
    while len(idx) < k:
        for q in queues:
            if depth < len(q) and len(idx) < k:
                idx.append(q[depth])
        depth += 1
    return Selection("topk-balanced", idx, cos[idx].tolist())


def random(n: int, k: int, seed: int) -> Selection:
    """k rows uniformly without replacement: a prefix of one seeded permutation, so a smaller
    K's draw is the start of a larger K's (like every other strategy's picks)."""
    idx = np.random.default_rng(seed).permutation(n)[:k].tolist()
    return Selection("random", idx, [0.0] * k)


def loss_min(loss_ft: np.ndarray, k: int) -> Selection:
    idx = _top(-loss_ft, k)  # the k *lowest* losses (the published code returned the highest)
    return Selection("loss-min", idx, loss_ft[idx].tolist())


def loss_max(loss_ft: np.ndarray, k: int) -> Selection:
    idx = _top(loss_ft, k)
    return Selection("loss-max", idx, loss_ft[idx].tolist())


def loss_diff(loss_ft: np.ndarray, loss_base: np.ndarray, k: int) -> Selection:
    """The k most negative ℓ(θf) − ℓ(θ0): documents the fine-tune made most likely."""
    diff = loss_ft - loss_base
    idx = _top(-diff, k)
    return Selection("loss-diff", idx, diff[idx].tolist())
