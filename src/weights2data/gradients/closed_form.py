"""Per-example gradients of linear layers from their factors, never formed.

For a linear layer y = W x̃ inside the model and document i, G_i = Σ_t δ_t x̃_tᵀ with
δ_t = ∂L_i/∂y_t (the "left" factor, B×T×O) and x̃_t the layer's input (the "right" factor,
B×T×I', with a trailing 1 when the layer has a bias). For the last layer δ_t is the weighted
softmax residual r_t = w_t (softmax(z_t) − e_{y_t}), known in closed form.

  ⟨G_i, Q⟩ = Σ_t δ_tᵀ Q x̃_t                   (exact, one more layer-sized product)
  ‖G_i‖²   = Σ_{t,s} (δ_t·δ_s)(x̃_t·x̃_s)        (exact, from two T×T Gram matrices)

Products run in `dtype` (the model's compute dtype) and accumulate in float32.
"""

from __future__ import annotations

import torch

from ..framings import Positions


def mm(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """a @ b in `dtype` (default: float32), returned as float32."""
    dtype = dtype or torch.float32
    return (a.to(dtype) @ b.to(dtype)).float()


def residuals_and_loss(
    logits: torch.Tensor, weight: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """r = w (softmax(z) − e_y), (B, T, C), and the weighted cross-entropy per document, (B,).

    `logits` (float32) is overwritten: softmax, residual and loss are formed in place in it,
    so a 50k-token vocabulary costs one logits-sized buffer, not three.
    """
    y = target.clamp_min(0).unsqueeze(-1)
    r = logits
    r.sub_(r.amax(-1, keepdim=True))
    z_y = r.gather(-1, y)
    r.exp_()
    total = r.sum(-1, keepdim=True)
    r.div_(total)
    loss = ((total.log() - z_y).squeeze(-1) * weight).sum(-1)  # logsumexp(z) − z_y
    r.scatter_add_(-1, y, -torch.ones_like(z_y))
    r.mul_(weight.unsqueeze(-1))
    return r, loss


def residuals(pos: Positions, target: torch.Tensor) -> torch.Tensor:
    """r for a whole batch at once (tests and small heads)."""
    return residuals_and_loss(pos.logits().detach(), pos.weight, target)[0]


def alignment(left: torch.Tensor, right: torch.Tensor, q: torch.Tensor,
              dtype: torch.dtype | None = None) -> torch.Tensor:
    """⟨G_i, Q⟩ = Σ_t δ_tᵀ Q x̃_t for each document, Q the (O, I') target; (B,).

    Contracting δ with Q first gives a (B, T, I') temporary instead of a (B, T, O) one."""
    return (mm(left, q, dtype) * right.float()).sum(dim=(1, 2))


def alignment_low_rank(left: torch.Tensor, right: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                       scale: float, dtype: torch.dtype | None = None) -> torch.Tensor:
    """⟨G_i, Q⟩ for Q = scale · B A (B: O×r, A: r×I'), without forming Q; (B,)."""
    return scale * (mm(left, b, dtype) * mm(right, a.T, dtype)).sum(dim=(1, 2))


def squared_norms(left: torch.Tensor, right: torch.Tensor,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """‖G_i‖² for each document; (B,)."""
    if left.shape[1] == 1:
        return left.float().square().sum((1, 2)) * right.float().square().sum((1, 2))
    gl = mm(left, left.transpose(1, 2), dtype)
    gr = mm(right, right.transpose(1, 2), dtype)
    return (gl * gr).sum(dim=(1, 2))


def materialise(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """The full (B, O, I') gradients: for tests and small layers only."""
    return torch.einsum("bto,bti->boi", left.float(), right.float())
