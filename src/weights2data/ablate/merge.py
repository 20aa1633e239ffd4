"""Mixture models by parameter averaging: θ_M = θ0 + Σ_{u∈M} w_u Δ_u, w_u ∝ tokens of u.

Streaming: one model is rebuilt in place from a copy of θ0 (the only two models in memory),
and each delta is read from its safetensors file one tensor at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import PreTrainedModel

from ..config import UserError


def token_weights(tokens: Sequence[int]) -> list[float]:
    """w_u = tokens_u / Σ tokens (equal for equal units)."""
    total = sum(tokens)
    if total <= 0:
        raise UserError("a mixture needs units with tokens")
    return [t / total for t in tokens]


@torch.no_grad()
def merge_into(
    model: PreTrainedModel,
    base_state: Mapping[str, torch.Tensor],
    deltas: Sequence[str | Path],
    weights: Sequence[float],
) -> PreTrainedModel:
    """Set `model` to base_state + Σ weights[i] · deltas[i], in place, and return it."""
    if len(deltas) != len(weights) or not deltas:
        raise ValueError("need one weight per delta, and at least one delta")
    model.load_state_dict(base_state)
    params = dict(model.named_parameters())
    for path, w in zip(deltas, weights):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                if name not in params:
                    raise UserError(f"delta {path} holds {name}, which the base model lacks; "
                                    "it was trained from another base")
                d = f.get_tensor(name)
                if d.shape != params[name].shape:
                    raise UserError(f"delta {path}: {name} has shape {tuple(d.shape)}, the base "
                                    f"{tuple(params[name].shape)}; it was trained from another base")
                params[name].add_(d.to(params[name].device, params[name].dtype), alpha=w)
    return model


def merge_units(model, base_state, pool, unit_ids: Sequence[str]) -> PreTrainedModel:
    """θ_M for a mixture of a pool's units (ids), token-weighted."""
    missing = [u for u in unit_ids if u not in pool.units]
    if missing:
        raise UserError(f"pool {pool.path} has no unit {missing[0]!r}")
    weights = token_weights([pool.tokens(u) for u in unit_ids])
    return merge_into(model, base_state, [pool.delta_path(u) for u in unit_ids], weights)
