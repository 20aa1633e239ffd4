"""SELECT: greedily grow B so that the summed gradient S = Σ_{i∈B} g_i points along q.

Incremental form (method.md): with a_i = ⟨g_i, q⟩, n_i = ‖g_i‖² and c_i = ⟨g_i, S⟩,
cos(S + g_i, q) = (⟨S,q⟩ + a_i) / (‖q‖ √(‖S‖² + 2c_i + n_i)); after a pick only c needs
one pass over G. Scores are averaged over the P synthetic checkpoints.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .result import Selection

_BLOCK = 1 << 15  # rows of G per matrix-vector block: bounds the temporary memory


def _cross(grads: torch.Tensor, g: torch.Tensor, out: torch.Tensor) -> None:
    """out += G · g for every checkpoint, block by block over documents."""
    for start in range(0, grads.shape[1], _BLOCK):
        block = grads[:, start : start + _BLOCK]
        out[:, start : start + _BLOCK] += torch.einsum("pnd,pd->pn", block, g)


def _scores(sq, ss, c, align, sqnorm, target_norm) -> torch.Tensor:
    denom = target_norm * (ss.unsqueeze(1) + 2 * c + sqnorm).clamp_min(0).sqrt()
    cos = torch.where(denom > 0, (sq.unsqueeze(1) + align) / denom.clamp_min(1e-30), 0.0)
    return cos.mean(0)


@torch.no_grad()
def greedy(
    grads: torch.Tensor,
    align: torch.Tensor,
    sqnorm: torch.Tensor,
    target_norm: float,
    k: int,
    reset_every: int | None = None,
    progress: bool = False,
) -> Selection:
    """Pick k rows of `grads` (P, N, d) by the SELECT greedy; `reset_every` = b gives
    select-batched (S restarts every b picks). Ties go to the lower row number."""
    p, n, _ = grads.shape
    device = grads.device
    align, sqnorm = align.to(device, torch.float32), sqnorm.to(device, torch.float32)
    c = torch.zeros(p, n, device=device)
    sq = torch.zeros(p, device=device)  # ⟨S, q⟩ per checkpoint
    ss = torch.zeros(p, device=device)  # ‖S‖² per checkpoint
    taken = torch.zeros(n, dtype=torch.bool, device=device)
    picks, gains, curve = [], [], []
    for step in tqdm(range(k), desc="select", disable=not progress, unit="pick"):
        if reset_every and step and step % reset_every == 0:
            c.zero_(), sq.zero_(), ss.zero_()
        score = _scores(sq, ss, c, align, sqnorm, target_norm)
        score[taken] = -torch.inf
        i = int(torch.argmax(score))
        taken[i] = True
        picks.append(i)
        gains.append(float(score[i]))
        sq += align[:, i]
        ss += 2 * c[:, i] + sqnorm[:, i]
        _cross(grads, grads[:, i].to(device), c)
        norm = target_norm * ss.clamp_min(0).sqrt()
        curve.append(float(torch.where(norm > 0, sq / norm.clamp_min(1e-30), 0.0).mean()))
    return Selection("select-batched" if reset_every else "select", picks, gains, curve)
