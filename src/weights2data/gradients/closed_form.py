"""Per-example last-layer gradients in closed form, from one forward pass (no autograd).

For g_i = Σ_t r_t ⊗ h_t with r_t = w_t (softmax(z_t) − e_{y_t}):
  ⟨g_i, Q⟩ = Σ_t r_tᵀ Q h_t                    (exact, the cost of one more head product)
  ‖g_i‖²   = Σ_{t,s} (r_t·r_s)(h_t·h_s)         (exact, from two T×T Gram matrices)
"""

from __future__ import annotations

import torch

from ..framings import Positions


def residuals(pos: Positions, target: torch.Tensor) -> torch.Tensor:
    """r = w (softmax(z) − e_y), shape (B, T, C)."""
    r = torch.softmax(pos.logits, dim=-1)
    r.scatter_add_(-1, target.clamp_min(0).unsqueeze(-1), -torch.ones_like(r[..., :1]))
    return r * pos.weight.unsqueeze(-1)


def alignment(r: torch.Tensor, h: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """⟨g_i, q⟩ for each document, q the (C, H') target; (B,)."""
    return (r * (h @ q.T)).sum(dim=(1, 2))


def squared_norms(r: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """‖g_i‖² for each document; (B,)."""
    if r.shape[1] == 1:
        return r.square().sum((1, 2)) * h.square().sum((1, 2))
    return ((r @ r.transpose(1, 2)) * (h @ h.transpose(1, 2))).sum(dim=(1, 2))


def materialise(r: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The full (B, C, H') gradients: for tests and small layers only."""
    return torch.einsum("btc,bth->bch", r, h)
