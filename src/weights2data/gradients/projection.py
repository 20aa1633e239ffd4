"""Maps from a per-example layer gradient G = Σ_t δ_t ⊗ x̃_t (O×I') to d numbers, and their
combination over several layers.

Every projector takes the factors (δ: B×T×O, x̃: B×T×I') so G is only materialised where that
is cheap or asked for. Kronecker maps are drawn on the CPU from a seeded generator (the same
seed gives the same map on any device); dense maps are drawn chunk by chunk on the device
they are used on (the same seed gives the same map per device type) and kept when they fit.

Several layers: when all of them together have at most `exact_max` entries they are kept
exactly, side by side. Otherwise each layer gets its own seeded map to the full d and the
sketches are **summed**: with independent maps, E⟨Σ_l R_l g_l, Σ_l R_l g'_l⟩ = Σ_l ⟨g_l, g'_l⟩,
an unbiased sketch of the concatenated gradient whose cross-layer error is that of a dense
d-dimensional map, while each layer keeps all d dimensions for its own (Kronecker) error,
instead of d / L each.
"""

from __future__ import annotations

import math
import zlib

import torch

from .closed_form import materialise, mm
from .targets import Target

_CHUNK = 1 << 16  # rows of a dense map generated at once
_DENSE_CACHE_BYTES = 1 << 30  # a dense map up to this size is generated once and kept


class Projector:
    """One layer's map."""

    kind: str
    dim: int

    def project(self, left: torch.Tensor, right: torch.Tensor,
                dtype: torch.dtype | None = None) -> torch.Tensor:
        """(B, T, O), (B, T, I') -> (B, dim) float32."""
        raise NotImplementedError

    def project_target(self, target: Target) -> torch.Tensor:
        """The target q of this layer -> (dim,), with the same map."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"kind": self.kind, "dim": self.dim}


class Exact(Projector):
    """No projection: the flattened O×I' gradient itself."""

    kind = "exact"

    def __init__(self, o: int, i: int):
        self.dim = o * i

    def project(self, left, right, dtype=None):
        return materialise(left, right).flatten(1)

    def project_target(self, target):
        return target.matrix().flatten()


class Kronecker(Projector):
    """R = R_O ⊗ R_I: R g = R_Oᵀ G R_I = Σ_t (R_Oᵀ δ_t) ⊗ (R_Iᵀ x̃_t), never forming G.

    Entries N(0, 1/d_O) and N(0, 1/d_I), so E⟨Rg, Rg'⟩ = ⟨g, g'⟩.
    """

    kind = "kronecker"

    def __init__(self, o: int, i: int, dim: int, seed: int, device: torch.device | str = "cpu"):
        d_i = min(i, 2 ** round(math.log2(math.sqrt(dim))))
        d_o = max(1, dim // d_i)
        self.dim = d_o * d_i
        self.d_o, self.d_i, self.seed = d_o, d_i, seed
        gen = torch.Generator().manual_seed(seed)
        self.r_o = (torch.randn(o, d_o, generator=gen) / math.sqrt(d_o)).to(device)
        self.r_i = (torch.randn(i, d_i, generator=gen) / math.sqrt(d_i)).to(device)

    def project(self, left, right, dtype=None):
        u = mm(left, self.r_o.to(left.device), dtype)
        v = mm(right, self.r_i.to(right.device), dtype)
        return torch.einsum("btu,btv->buv", u, v).flatten(1)

    def project_target(self, target):
        r_o, r_i = self.r_o.to(target.device), self.r_i.to(target.device)
        if target.low_rank is not None:  # scale · (R_Oᵀ B)(A R_I): never forms B A
            a, b, scale = target.low_rank
            return (scale * (r_o.T @ b.float()) @ (a.float() @ r_i)).flatten()
        return (r_o.T @ target.matrix() @ r_i).flatten()

    def describe(self):
        return {"kind": self.kind, "dim": self.dim, "d_out": self.d_o, "d_in": self.d_i,
                "seed": self.seed}


class Dense(Projector):
    """A dense D×d Rademacher or Gaussian map over the flattened gradient (D = O·I'),
    generated in row chunks from the seed on the device that uses it."""

    def __init__(self, o: int, i: int, dim: int, seed: int, kind: str = "dense-rademacher"):
        self.kind, self.dim, self.seed = kind, dim, seed
        self.total = o * i
        self._kept: dict[str, list[torch.Tensor]] = {}  # device -> chunks, when they fit

    def _chunk(self, k: int, rows: int, device: torch.device) -> torch.Tensor:
        gen = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + k)
        if self.kind == "dense-gaussian":
            m = torch.randn(rows, self.dim, generator=gen, device=device)
        else:
            m = torch.randint(0, 2, (rows, self.dim), generator=gen, device=device).float() * 2 - 1
        return m / math.sqrt(self.dim)

    def _chunks(self, device: torch.device):
        spans = [(k, s, min(s + _CHUNK, self.total)) for k, s in enumerate(range(0, self.total, _CHUNK))]
        key = str(device)
        if key in self._kept:
            yield from zip(spans, self._kept[key])
            return
        keep = self.total * self.dim * 4 <= _DENSE_CACHE_BYTES
        kept = []
        for k, start, stop in spans:
            m = self._chunk(k, stop - start, device)
            if keep:
                kept.append(m)
            yield (k, start, stop), m
        if keep:
            self._kept[key] = kept

    def project_flat(self, g: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(g), self.dim, device=g.device)
        for (_, start, stop), m in self._chunks(g.device):
            out += g[:, start:stop].float() @ m
        return out

    def project(self, left, right, dtype=None):
        return self.project_flat(materialise(left, right).flatten(1))

    def project_target(self, target):
        return self.project_flat(target.matrix().flatten().unsqueeze(0))[0]

    def describe(self):
        return {"kind": self.kind, "dim": self.dim, "seed": self.seed}


def layer_seed(seed: int, name: str) -> int:
    """A layer's own map seed: stable across runs and machines."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def make_projector(o: int, i: int, kind: str, dim: int, seed: int, device="cpu") -> Projector:
    if kind == "kronecker":
        return Kronecker(o, i, dim, seed, device)
    if kind in ("dense-rademacher", "dense-gaussian"):
        return Dense(o, i, dim, seed, kind)
    raise ValueError(f"unknown projection {kind!r}")


class Sketch:
    """The map of a whole layer set: exact side by side when small, else summed per-layer maps."""

    def __init__(self, shapes: dict[str, tuple[int, int]], kind: str, dim: int, exact_max: int,
                 seed: int, device="cpu"):
        total = sum(o * i for o, i in shapes.values())
        self.exact = total <= exact_max
        self.maps: dict[str, Projector] = {}
        self.offsets: dict[str, int] = {}
        offset = 0
        for name, (o, i) in shapes.items():
            if self.exact:
                self.maps[name] = Exact(o, i)
                self.offsets[name] = offset
                offset += o * i
            else:
                self.maps[name] = make_projector(o, i, kind, dim, layer_seed(seed, name), device)
                self.offsets[name] = 0
        self.dim = offset if self.exact else next(iter(self.maps.values())).dim
        if not self.exact and any(m.dim != self.dim for m in self.maps.values()):
            raise ValueError("every layer's map must have the same dimension")

    def add(self, out: torch.Tensor, name: str, left: torch.Tensor, right: torch.Tensor,
            dtype: torch.dtype | None = None) -> None:
        """out[:, this layer's slice] += the layer's sketch of G_i = Σ_t δ_t ⊗ x̃_t."""
        m, start = self.maps[name], self.offsets[name]
        out[:, start : start + m.dim] += m.project(left, right, dtype)

    def target(self, targets: dict[str, Target]) -> torch.Tensor:
        """q of every layer, mapped like the gradients; (dim,)."""
        out = None
        for name, m in self.maps.items():
            t = m.project_target(targets[name]).float().cpu()
            if out is None:
                out = torch.zeros(self.dim)
            out[self.offsets[name] : self.offsets[name] + m.dim] += t
        return out

    def describe(self) -> dict:
        first = next(iter(self.maps.values()))
        return {"kind": "exact" if self.exact else first.kind, "dim": self.dim,
                "combine": "concatenate" if self.exact else "sum",
                "layers": {n: m.describe() for n, m in self.maps.items()}}
