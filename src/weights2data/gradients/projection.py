"""Maps from a per-example last-layer gradient g = Σ_t r_t ⊗ h_t (C×H') to d numbers.

Every projector takes the factors (r: B×T×C weighted residuals, h: B×T×H' inputs) so a
(C×H') gradient is only materialised where that is cheap or asked for. Random maps are
drawn on the CPU from a seeded generator, so the same seed gives the same map on any device.
"""

from __future__ import annotations

import math

import torch

_CHUNK = 1 << 16  # columns of a dense map generated at once


class Projector:
    kind: str
    dim: int

    def project(self, r: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """(B, T, C), (B, T, H') -> (B, dim)."""
        raise NotImplementedError

    def project_matrix(self, m: torch.Tensor) -> torch.Tensor:
        """A (C, H') matrix (the target q) -> (dim,), with the same map as `project`."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"kind": self.kind, "dim": self.dim}


class Exact(Projector):
    """No projection: the flattened C×H' gradient itself."""

    kind = "exact"

    def __init__(self, c: int, h: int):
        self.dim = c * h

    def project(self, r, h):
        return torch.einsum("btc,bth->bch", r, h).flatten(1)

    def project_matrix(self, m):
        return m.flatten().float()


class Kronecker(Projector):
    """R = R_C ⊗ R_H: R g = R_Cᵀ G R_H = Σ_t (R_Cᵀ r_t) ⊗ (R_Hᵀ h_t), never forming G.

    Entries N(0, 1/d_C) and N(0, 1/d_H), so E⟨Rg, Rg'⟩ = ⟨g, g'⟩.
    """

    kind = "kronecker"

    def __init__(self, c: int, h: int, dim: int, seed: int, device: torch.device | str = "cpu"):
        d_h = min(h, 2 ** round(math.log2(math.sqrt(dim))))
        d_c = max(1, dim // d_h)
        self.dim = d_c * d_h
        self.d_c, self.d_h, self.seed = d_c, d_h, seed
        gen = torch.Generator().manual_seed(seed)
        self.r_c = (torch.randn(c, d_c, generator=gen) / math.sqrt(d_c)).to(device)
        self.r_h = (torch.randn(h, d_h, generator=gen) / math.sqrt(d_h)).to(device)

    def project(self, r, h):
        u = r @ self.r_c.to(r.device)
        v = h @ self.r_h.to(h.device)
        return torch.einsum("btu,btv->buv", u, v).flatten(1)

    def project_matrix(self, m):
        return (self.r_c.T.to(m.device) @ m.float() @ self.r_h.to(m.device)).flatten()

    def describe(self):
        return {"kind": self.kind, "dim": self.dim, "d_c": self.d_c, "d_h": self.d_h, "seed": self.seed}


class Dense(Projector):
    """A dense D×d Rademacher or Gaussian map over the flattened gradient (D = C·H'),
    generated chunk by chunk from the seed and never stored whole."""

    def __init__(self, c: int, h: int, dim: int, seed: int, kind: str = "dense-rademacher"):
        self.kind, self.dim, self.seed = kind, dim, seed
        self.total = c * h

    def _chunk(self, k: int, rows: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        if self.kind == "dense-gaussian":
            m = torch.randn(rows, self.dim, generator=gen)
        else:
            m = torch.randint(0, 2, (rows, self.dim), generator=gen).float() * 2 - 1
        return m / math.sqrt(self.dim)

    def project_flat(self, g: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(g), self.dim, device=g.device)
        for k, start in enumerate(range(0, self.total, _CHUNK)):
            stop = min(start + _CHUNK, self.total)
            out += g[:, start:stop].float() @ self._chunk(k, stop - start).to(g.device)
        return out

    def project(self, r, h):
        return self.project_flat(torch.einsum("btc,bth->bch", r, h).flatten(1))

    def project_matrix(self, m):
        return self.project_flat(m.flatten().float().unsqueeze(0))[0]

    def describe(self):
        return {"kind": self.kind, "dim": self.dim, "seed": self.seed}


def make_projector(
    c: int, h: int, kind: str, dim: int, exact_max: int, seed: int, device="cpu"
) -> Projector:
    """Exact when the layer has at most `exact_max` entries, else the requested projection."""
    if c * h <= exact_max:
        return Exact(c, h)
    if kind == "kronecker":
        return Kronecker(c, h, dim, seed, device)
    if kind in ("dense-rademacher", "dense-gaussian"):
        return Dense(c, h, dim, seed, kind)
    raise ValueError(f"unknown projection {kind!r}")
