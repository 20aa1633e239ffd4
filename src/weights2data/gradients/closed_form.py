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
    return residuals_and_loss(pos, target)[0]


def residuals_and_loss(pos: Positions, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """r = w (softmax(z) − e_y), (B, T, C), and the weighted cross-entropy per document, (B,).

    One (B, T, C) allocation: with C a 50k-token vocabulary this is the size of the logits,
    so softmax, residual and loss are all formed in place in it.
    """
    y = target.clamp_min(0).unsqueeze(-1)
    top = pos.logits.amax(-1, keepdim=True)
    r = pos.logits - top
    z_y = r.gather(-1, y)
    r.exp_()
    total = r.sum(-1, keepdim=True)
    r.div_(total)
    loss = ((total.log() - z_y).squeeze(-1) * pos.weight).sum(-1)  # logsumexp(z) − z_y
    r.scatter_add_(-1, y, -torch.ones_like(z_y))
    r.mul_(pos.weight.unsqueeze(-1))
    return r, loss


def alignment(r: torch.Tensor, h: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """⟨g_i, q⟩ = Σ_t r_tᵀ Q h_t for each document, q the (C, H') target; (B,).

    Contracting r with Q first gives a (B, T, H') temporary instead of a (B, T, C) one."""
    return ((r @ q) * h).sum(dim=(1, 2))


def squared_norms(r: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """‖g_i‖² for each document; (B,)."""
    if r.shape[1] == 1:
        return r.square().sum((1, 2)) * h.square().sum((1, 2))
    return ((r @ r.transpose(1, 2)) * (h @ h.transpose(1, 2))).sum(dim=(1, 2))


def materialise(r: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The full (B, C, H') gradients: for tests and small layers only."""
    return torch.einsum("btc,bth->bch", r, h)
