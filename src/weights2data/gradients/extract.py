"""Gradients of every document at every synthetic checkpoint, in one pass per checkpoint."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..framings import Framing
from . import closed_form
from .projection import Projector


@dataclass
class Gradients:
    """What selection needs: projected gradients plus exact scalars per document."""

    grads: torch.Tensor  # (P, N, d) projected (or exact) gradients, float32
    align: torch.Tensor  # (P, N) exact ⟨g, q⟩
    sqnorm: torch.Tensor  # (P, N) exact ‖g‖²
    target: torch.Tensor  # (d,) the target q, mapped like the gradients
    target_norm: float  # exact ‖q‖
    alphas: list[float]  # interpolation coefficient of each checkpoint
    base_loss: torch.Tensor | None = None  # (N,) loss at θ0 (available when α=0 is among alphas)
    projector: dict = field(default_factory=dict)

    def cosines(self) -> torch.Tensor:
        """mean_j cos(g_{j,i}, q): the top-k score, (N,)."""
        denom = self.sqnorm.sqrt() * self.target_norm
        return torch.where(denom > 0, self.align / denom.clamp_min(1e-30), 0.0).mean(0)


def checkpoint_alphas(checkpoints: int, grad_at: str) -> list[float]:
    """θ_j = θ0 + (j/P)Δ for j = 0..P-1, or θf alone."""
    if grad_at == "finetuned":
        return [1.0]
    if checkpoints < 1:
        raise ValueError("checkpoints must be ≥ 1")
    return [j / checkpoints for j in range(checkpoints)]


@torch.no_grad()
def interpolated(
    base: PreTrainedModel, finetuned: PreTrainedModel, alphas: list[float]
) -> Iterator[tuple[float, PreTrainedModel]]:
    """Yield (α, θ0 + α(θf − θ0)), reusing one working copy for the intermediate points."""
    work = None
    for alpha in alphas:
        if alpha == 0.0:
            yield alpha, base
        elif alpha == 1.0:
            yield alpha, finetuned
        else:
            if work is None:
                work = copy.deepcopy(base)
            ft = dict(finetuned.named_parameters())
            for (name, p), (_, p0) in zip(work.named_parameters(), base.named_parameters()):
                p.copy_(p0 + alpha * (ft[name] - p0))
            yield alpha, work


@torch.no_grad()
def extract(
    framing: Framing,
    base: PreTrainedModel,
    finetuned: PreTrainedModel,
    texts: list[str],
    labels: torch.Tensor | None,
    projector: Projector,
    target: torch.Tensor,
    alphas: list[float],
    batch_size: int,
    lengths: list[int] | None = None,
    progress: bool = True,
) -> Gradients:
    """Closed-form last-layer gradients of every document at every checkpoint.

    `target` is the (C, H') matrix q = θ0_last − θf_last; `labels` the autolabels
    (None for `lm`, whose targets are the next tokens).
    """
    device = next(base.parameters()).device
    n, p = len(texts), len(alphas)
    q = target.float().to(device)
    grads = torch.zeros(p, n, projector.dim)
    align, sqnorm = torch.zeros(p, n), torch.zeros(p, n)
    base_loss = torch.zeros(n) if 0.0 in alphas else None
    bar = tqdm(total=n * p, desc=f"gradients at {p} checkpoint(s)", disable=not progress, unit="doc")
    for j, (alpha, model) in enumerate(interpolated(base, finetuned, alphas)):
        for idx, batch in framing.batches(texts, batch_size, device, lengths):
            pos = framing.forward(model, batch)
            y = pos.target if labels is None else labels[idx].to(device).unsqueeze(1)
            r, loss = closed_form.residuals_and_loss(pos, y)
            if alpha == 0.0:
                base_loss[idx] = loss.cpu()
            grads[j, idx] = projector.project(r, pos.hidden).cpu()
            align[j, idx] = closed_form.alignment(r, pos.hidden, q).cpu()
            sqnorm[j, idx] = closed_form.squared_norms(r, pos.hidden).cpu()
            bar.update(len(idx))
    bar.close()
    return Gradients(
        grads=grads,
        align=align,
        sqnorm=sqnorm,
        target=projector.project_matrix(q).cpu(),
        target_norm=q.norm().item(),
        alphas=list(alphas),
        base_loss=base_loss,
        projector=projector.describe(),
    )

