"""The target q = θ0 − θf of one layer, as a dense (O, I') matrix or, for a LoRA adapter,
as the low-rank product −s·B A that is never formed."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .closed_form import alignment, alignment_low_rank


@dataclass
class Target:
    """q of one layer in the gradient's layout (O, I'): [W | b] with the bias as last column."""

    dense: torch.Tensor | None = None  # (O, I')
    low_rank: tuple[torch.Tensor, torch.Tensor, float] | None = None  # (A (r, I'), B (O, r), scale)

    @classmethod
    def of_difference(cls, base: torch.Tensor, finetuned: torch.Tensor,
                      dtype: torch.dtype = torch.float32) -> Target:
        """θ0 − θf, subtracted in float32 (a bf16 difference of two bf16 weights would lose it)."""
        return cls(dense=(base.float() - finetuned.float()).to(dtype))

    @classmethod
    def of_lora(cls, a: torch.Tensor, b: torch.Tensor, scaling: float, bias: bool) -> Target:
        """q = −s·B A for an adapter whose ΔW = s·B A (a zero bias column when the layer has one)."""
        if bias:
            a = torch.cat([a, torch.zeros_like(a[:, :1])], dim=1)
        return cls(low_rank=(a, b, -float(scaling)))

    @property
    def device(self) -> torch.device:
        return self.dense.device if self.dense is not None else self.low_rank[0].device

    @property
    def shape(self) -> tuple[int, int]:
        if self.dense is not None:
            return tuple(self.dense.shape)
        a, b, _ = self.low_rank
        return b.shape[0], a.shape[1]

    def matrix(self) -> torch.Tensor:
        """The dense float32 (O, I') matrix (formed on demand for a low-rank target)."""
        if self.dense is not None:
            return self.dense.float()
        a, b, scale = self.low_rank
        return scale * (b.float() @ a.float())

    def sqnorm(self) -> float:
        """‖q‖², exactly (for a low-rank q: s² tr((BᵀB)(AAᵀ)))."""
        if self.dense is not None:
            return float(self.dense.float().square().sum())
        a, b, scale = self.low_rank
        a, b = a.double(), b.double()
        return float(scale**2 * ((b.T @ b) * (a @ a.T)).sum())

    def align(self, left: torch.Tensor, right: torch.Tensor,
              dtype: torch.dtype | None = None) -> torch.Tensor:
        """⟨G_i, q⟩ per document from the gradient's factors; (B,)."""
        if self.dense is not None:
            return alignment(left, right, self.dense, dtype)
        a, b, scale = self.low_rank
        return alignment_low_rank(left, right, a, b, scale, dtype)

    def rows(self, rows) -> Target:
        """The target restricted to output rows `rows` (label tokens of an LM head)."""
        if isinstance(rows, torch.Tensor):
            rows = rows.to(self.device)
        if self.dense is not None:
            return Target(dense=self.dense[rows])
        a, b, scale = self.low_rank
        return Target(low_rank=(a, b[rows], scale))

    def to(self, device) -> Target:
        if self.dense is not None:
            return Target(dense=self.dense.to(device))
        a, b, scale = self.low_rank
        return Target(low_rank=(a.to(device), b.to(device), scale))
