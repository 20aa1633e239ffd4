"""Adam-aware mixture proportions: fit π on the simplex so that Adam's expected update under the
mixture points along q = θ0 − θf.

Adam moves coordinate j by about lr·m̂_j/(√v̂_j + ε), whatever the gradient's size. Training on
a mixture π of domains with per-document gradient moments μ_d = E_d[g], s_d = E_d[g⊙g] (exact,
per coordinate, `moments.py`), a batch-mean gradient of B documents has

    m(π) = Σ_d π_d μ_d,    v(π) = E[ḡ²] = m² + (Σ_d π_d s_d − m²)/B,

and the expected update is u(π) = m/(√v + ε): near sign(m) where the domains agree (or B is
large), shrunk towards 0 where per-document gradients disagree in sign. Averaged over the P
synthetic checkpoints like the linear estimate's rows, û(π) = mean_j u_j(π), and

    π̂ = argmax_{π ∈ simplex} cos(q, û(π))

(SLSQP from several deterministic starts). With `batch=None`, b = 1/B ∈ [0, 1] is fitted with π
(b = 0: an infinite batch, û = sign(m); b = 1: one document per step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .estimate import Estimate, normalise
from .moments import Moments

DEFAULT_EPS = 1e-8  # torch.optim.Adam's
DEFAULT_MAX_COORDINATES = 1_000_000


@dataclass
class AdamProblem:
    """The kept coordinates' moments, one row per checkpoint (float32, on one device)."""

    first: torch.Tensor  # (P, D, n) μ_d at each checkpoint
    second: torch.Tensor  # (P, D, n) s_d
    q: torch.Tensor  # (n,)
    eps: float = DEFAULT_EPS
    # (D,) documents behind each domain's moments: with them, the sampling variance of the
    # estimated m(π), Σ_d π_d² (s_d − μ_d²)/n_d, is added to v (coordinates the corpus cannot
    # sign reliably are damped). None: moments taken as exact.
    documents: torch.Tensor | None = None

    @classmethod
    def from_moments(cls, m: Moments, eps: float = DEFAULT_EPS,
                     max_coordinates: int | None = DEFAULT_MAX_COORDINATES,
                     seed: int = 0, sampling: bool = False) -> AdamProblem:
        """A uniform seeded sample of at most `max_coordinates` of the kept coordinates (the
        objective's sums over coordinates, estimated without bias; None: all)."""
        if m.second is None:
            raise ValueError("the Adam estimate needs second moments (domain_moments(second=True))")
        first, second, q = m.by_checkpoint("first"), m.by_checkpoint("second"), m.flat_target()
        n = q.numel()
        if max_coordinates is not None and n > max_coordinates:
            g = torch.Generator().manual_seed(seed)
            keep = torch.randperm(n, generator=g)[:max_coordinates].sort().values.to(q.device)
            first, second, q = first[..., keep], second[..., keep], q[keep]
        docs = m.documents.float().to(q.device) if sampling and m.documents is not None else None
        return cls(first.float(), second.float(), q.float(), eps, docs)

    def update(self, pi: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """û(π) = mean_j m_j/(√v_j + ε), v_j = (1 − b) m_j² + b Σ_d π_d s_dj (b = 1/B)."""
        m = torch.einsum("d,pdn->pn", pi, self.first)
        s = torch.einsum("d,pdn->pn", pi, self.second)
        v = (1 - b) * m.square() + b * s
        if self.documents is not None:
            spread = (self.second - self.first.square()).clamp_min(0)
            v = v + torch.einsum("d,pdn->pn", pi.square() / self.documents, spread)
        v = v.clamp_min(0)
        # √(v + ε²) instead of √v + ε: the same to within ε, and differentiable at v = 0
        return (m / (v + self.eps ** 2).sqrt()).mean(0)

    def cosine(self, pi: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        u = self.update(pi, b)
        return (u @ self.q) / (u.norm() * self.q.norm()).clamp_min(1e-30)


def _starts(d: int) -> list[np.ndarray]:
    """Uniform, then each domain at 0.7 with the rest shared: deterministic, covers corners."""
    out = [np.full(d, 1.0 / d)]
    for k in range(d):
        p = np.full(d, 0.3 / (d - 1))
        p[k] = 0.7
        out.append(p)
    return out


def fit(problem: AdamProblem, batch: float | None = 8.0) -> tuple[np.ndarray, float, float]:
    """(π̂, cos(q, û(π̂)), fitted or given B). `batch=None` fits b = 1/B ∈ [0, 1] too."""
    from scipy.optimize import minimize

    d = problem.first.shape[1]
    free_b = batch is None
    b_fixed = 0.0 if batch is None or np.isinf(batch) else 1.0 / batch

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        pi = t[:d].clamp_min(0).float()
        b = t[d].float() if free_b else torch.tensor(b_fixed)
        loss = -problem.cosine(pi, b)
        loss.backward()
        return float(loss.detach()), t.grad.numpy().copy()

    n_var = d + int(free_b)
    constraint = {"type": "eq", "fun": lambda x: x[:d].sum() - 1.0,
                  "jac": lambda x: np.r_[np.ones(d), np.zeros(n_var - d)]}
    best = None
    for p0 in _starts(d):
        x0 = np.r_[p0, [0.1]] if free_b else p0
        res = minimize(objective, x0, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * n_var,
                       constraints=[constraint], options={"maxiter": 100, "ftol": 1e-9})
        if best is None or res.fun < best.fun:
            best = res
    pi = normalise(np.clip(best.x[:d], 0, None))
    b = float(best.x[d]) if free_b else b_fixed
    return pi, -float(best.fun), (1.0 / b if b > 0 else float("inf"))


def adam_estimate(m: Moments, batch: float | None = 8.0, eps: float = DEFAULT_EPS,
                  max_coordinates: int | None = DEFAULT_MAX_COORDINATES,
                  seed: int = 0, sampling: bool = False) -> Estimate:
    """The Adam-aware proportions of `m.names` (no bootstrap: the moments are sums).
    `sampling`: add the corpus means' sampling variance to v (AdamProblem.documents)."""
    problem = AdamProblem.from_moments(m, eps, max_coordinates, seed, sampling)
    pi, cos, b = fit(problem, batch)
    return Estimate("adam", dict(zip(m.names, pi.tolist())), extra={
        "cosine": cos, "batch": b, "batch_fitted": batch is None, "eps": eps,
        "sampling": sampling,
        "coordinates": int(problem.q.numel()), "kept_coordinates": m.coordinates,
        "total_coordinates": m.total})
