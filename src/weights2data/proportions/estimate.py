"""Mixture proportions from per-document gradients: q ≈ Σ_d w_d ḡ_d, w ≥ 0 (non-negative least
squares), proportions w / Σw, bootstrap over documents for intervals.

Everything here works on the arrays `select()` returns, so it never touches a model:

- rows x_i = mean_j g_{j,i} (the P checkpoint gradients averaged *raw*, before any
  normalising: the mean over θ_j = θ0 + (j/P)Δ is a Riemann sum of the gradient integrated along
  the path from θ0 to θf, which is what SGD accumulates into θ0 − θf);
- a_i = mean_j ⟨g_{j,i}, q⟩, exact even when the rows are projected;
- ḡ_d = Σ_{i∈d} u_i x_i / Σ_{i∈d} u_i, with u_i = 1 (the fine-tune averaged its loss per
  document) or u_i = the document's loss tokens (it averaged over tokens).

The fit minimises ‖q − Σ_d w_d ḡ_d‖² = ‖q‖² − 2 bᵀw + wᵀGw with b_d = ⟨ḡ_d, q⟩ (exact, from a)
and G_de = ⟨ḡ_d, ḡ_e⟩ (from the rows, projected or exact).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import UserError
from ..gradients import Gradients
from ..selection.rows import Rows, TensorRows


@dataclass
class Estimate:
    """One method's proportions per domain, with a bootstrap interval where it has one."""

    method: str
    proportions: dict[str, float]
    low: dict[str, float] | None = None
    high: dict[str, float] | None = None
    extra: dict = field(default_factory=dict)  # method-specific numbers (weights, fit quality)

    def to_dict(self) -> dict:
        return {"method": self.method, "proportions": self.proportions, "low": self.low,
                "high": self.high, **self.extra}


@dataclass
class DomainRows:
    """The per-document numbers the gradient estimate needs, grouped by domain."""

    names: list[str]
    domain: np.ndarray  # (N,) int index into names
    rows: np.ndarray  # (N, d) checkpoint-averaged gradients, float32
    align: np.ndarray  # (N,) checkpoint-averaged exact ⟨g, q⟩
    weight: np.ndarray  # (N,) u_i
    q: np.ndarray  # (d,) target mapped like the rows
    q_norm2: float  # exact ‖q‖²

    @classmethod
    def from_gradients(cls, grads: Gradients, domain: np.ndarray, names: list[str],
                       weight: np.ndarray | None = None,
                       checkpoints: list[int] | None = None) -> DomainRows:
        """`checkpoints`: which of the P checkpoints to average (None: all)."""
        domain = np.asarray(domain)
        use = list(range(grads.grads.shape[0])) if checkpoints is None else list(checkpoints)
        check_domains(domain, names)
        _, n, d = grads.grads.shape
        source = grads.grads if isinstance(grads.grads, Rows) else TensorRows(grads.grads)
        rows = np.empty((n, d), dtype=np.float32)
        for start, block in source.blocks(torch.float64, torch.device("cpu")):
            rows[start:start + block.shape[1]] = block[use].mean(0).float().numpy()
        align = torch.as_tensor(grads.align)[use].double().mean(0).numpy()
        weight = np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64)
        return cls(list(names), domain, rows, align, weight,
                   torch.as_tensor(grads.target).double().numpy(), float(grads.target_norm) ** 2)


def check_domains(domain: np.ndarray, names: list[str]) -> None:
    """A UserError unless there are ≥ 2 domains and each has at least one document."""
    if len(names) < 2:
        raise UserError(f"a mixture needs at least 2 domains, got {len(names)} ({', '.join(names)}); "
                        "add corpora of the other domains")
    counts = np.bincount(domain, minlength=len(names))
    if len(counts) > len(names) or domain.min(initial=0) < 0:
        raise UserError("a document's domain index is out of range")
    for name, c in zip(names, counts):
        if c == 0:
            raise UserError(f"domain {name!r} has no documents; give it some or leave it out")


def _means(r: DomainRows, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For B resampling count vectors (B, N): domain means ḡ_d = Σ_{i∈d} c_i u_i x_i / Σ c_i u_i
    (B, D, d), their exact alignments with q (B, D), and the sampling variance of each mean,
    E‖ḡ_d − μ_d‖² ≈ Σ v_i² ‖x_i − ḡ_d‖² / (Σ v_i)² · n/(n − 1) with v_i = c_i u_i (B, D)."""
    cw = counts * r.weight  # (B, N)
    b_, k_ = len(cw), len(r.names)
    means, align, var = np.empty((b_, k_, r.rows.shape[1])), np.empty((b_, k_)), np.empty((b_, k_))
    sq = np.einsum("nd,nd->n", r.rows, r.rows, dtype=np.float64)
    for k in range(k_):
        rows = np.flatnonzero(r.domain == k)
        c = cw[:, rows]
        total = c.sum(1)
        x = r.rows[rows]
        means[:, k] = (c.astype(x.dtype) @ x) / total[:, None]
        align[:, k] = (c @ r.align[rows]) / total
        c2 = c ** 2
        # Σ v_i² ‖x_i − m‖² = Σ v_i² ‖x_i‖² − 2⟨Σ v_i² x_i, m⟩ + Σ v_i² ‖m‖²
        spread = (c2 @ sq[rows] - 2 * np.einsum("bd,bd->b", c2.astype(x.dtype) @ x, means[:, k])
                  + c2.sum(1) * np.einsum("bd,bd->b", means[:, k], means[:, k]))
        n = (c > 0).sum(1)
        var[:, k] = np.where(n > 1, np.clip(spread, 0, None) / total ** 2 * n / np.maximum(n - 1, 1), 0)
    return means, align, var


def nnls_gram(gram: np.ndarray, b: np.ndarray, q_norm2: float) -> tuple[np.ndarray, float]:
    """argmin_{w ≥ 0} ‖q‖² − 2bᵀw + wᵀGw, and that minimum (the squared residual).

    G = LLᵀ turns it into ‖Lᵀw − L⁻¹b‖², an ordinary NNLS (scipy). A tiny ridge keeps the
    Cholesky defined when two domains have (numerically) the same mean gradient."""
    from scipy.optimize import nnls

    d = len(b)
    scale = np.trace(gram) / d if np.trace(gram) > 0 else 1.0
    chol = np.linalg.cholesky(gram + 1e-10 * scale * np.eye(d))
    w, _ = nnls(chol.T, np.linalg.solve(chol, b))
    residual2 = q_norm2 - 2 * b @ w + w @ gram @ w
    return w, float(max(residual2, 0.0))


@dataclass
class GradientFit:
    weights: np.ndarray  # (D,) w_d
    residual2: float  # ‖q − Σ w_d ḡ_d‖²
    mean_norms: np.ndarray  # (D,) ‖ḡ_d‖

    def explained(self, q_norm2: float) -> float:
        """1 − ‖residual‖² / ‖q‖²: the share of q's squared norm the domains account for."""
        return 1.0 - self.residual2 / q_norm2 if q_norm2 > 0 else 0.0


def fit(r: DomainRows, counts: np.ndarray | None = None, debias: bool = False) -> list[GradientFit]:
    """The NNLS fit for each resampling count vector (None: every document once).

    `debias`: a domain mean from n documents overestimates ‖μ_d‖² by its sampling variance
    (tr Cov_d / n), which would shrink the weight of domains whose documents disagree most;
    the diagonal of G is corrected by that amount (off-diagonal terms and b are unbiased: the
    domains' documents are independent of each other and of the fine-tune's)."""
    counts = np.ones((1, len(r.domain))) if counts is None else np.atleast_2d(counts)
    means, align, var = _means(r, counts)
    out = []
    for m, b, v in zip(means, align, var):
        gram = m @ m.T
        norms = np.sqrt(np.clip(np.diag(gram), 0, None))
        if debias:
            gram = _nearest_psd(gram - np.diag(v))
        w, res2 = nnls_gram(gram, b, r.q_norm2)
        out.append(GradientFit(w, res2, norms))
    return out


def _nearest_psd(gram: np.ndarray) -> np.ndarray:
    """Clip negative eigenvalues (a debiased Gram can lose definiteness when a domain has very
    few or very diverse documents) to a small positive floor."""
    vals, vecs = np.linalg.eigh((gram + gram.T) / 2)
    floor = 1e-6 * max(vals.max(), 1e-30)
    return (vecs * np.clip(vals, floor, None)) @ vecs.T


def bootstrap_counts(domain: np.ndarray, n_domains: int, replicates: int, seed: int) -> np.ndarray:
    """(B, N) multinomial counts: each domain's documents resampled with replacement, so every
    replicate keeps each domain's size."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((replicates, len(domain)))
    for k in range(n_domains):
        rows = np.flatnonzero(domain == k)
        draws = rng.integers(0, len(rows), size=(replicates, len(rows)))
        for b in range(replicates):
            counts[b] += np.bincount(rows[draws[b]], minlength=len(domain))
    return counts


def normalise(w: np.ndarray) -> np.ndarray:
    total = w.sum()
    return w / total if total > 0 else np.full(len(w), 1.0 / len(w))


def other_weight(f: GradientFit) -> float:
    """The weight of one unseen domain that would carry the residual: ‖residual‖ divided by the
    w-weighted mean norm of the known domains' mean gradients (as if its mean gradient were as
    large as a typical domain's and orthogonal to all of them)."""
    if f.weights.sum() <= 0:
        return 1.0
    typical = float(f.weights @ f.mean_norms / f.weights.sum())
    return float(np.sqrt(f.residual2) / typical) if typical > 0 else 0.0


def gradient_estimate(r: DomainRows, bootstrap: int = 200, confidence: float = 0.95,
                      other_below: float = 0.0, seed: int = 0, debias: bool = False) -> Estimate:
    """NNLS proportions with percentile bootstrap intervals over documents. When the domains
    explain less than `other_below` of ‖q‖², an "other" share (other_weight) is added."""
    point = fit(r, debias=debias)[0]
    explained = point.explained(r.q_norm2)
    with_other = explained < other_below
    names = list(r.names) + (["other"] if with_other else [])

    def shares(f: GradientFit) -> np.ndarray:
        w = f.weights if not with_other else np.append(f.weights, other_weight(f))
        return normalise(w)

    est = shares(point)
    low = high = None
    if bootstrap > 0:
        counts = bootstrap_counts(r.domain, len(r.names), bootstrap, seed)
        reps = np.stack([shares(f) for f in fit(r, counts, debias)])
        tail = (1 - confidence) / 2 * 100
        low = dict(zip(names, np.percentile(reps, tail, axis=0).tolist()))
        high = dict(zip(names, np.percentile(reps, 100 - tail, axis=0).tolist()))
    return Estimate("gradient", dict(zip(names, est.tolist())), low, high, {
        "weights": dict(zip(r.names, point.weights.tolist())),
        "explained": explained,
        "residual_norm_ratio": float(np.sqrt(point.residual2 / r.q_norm2)) if r.q_norm2 > 0 else 1.0,
        "other_added": with_other,
        "other_weight": other_weight(point),
        "mean_gradient_norms": dict(zip(r.names, point.mean_norms.tolist())),
        "bootstrap": bootstrap, "confidence": confidence, "debias": debias,
    })


def pick_shares(picked: list[int], domain: np.ndarray, names: list[str], method: str) -> Estimate:
    """Each domain's share of a selection, corrected for the corpus' composition: picks of d
    divided by d's documents in the corpus, normalised (with equal domain sizes: the raw share)."""
    sizes = np.bincount(domain, minlength=len(names)).astype(float)
    picks = np.bincount(domain[np.asarray(picked, dtype=int)], minlength=len(names)).astype(float)
    return Estimate(method, dict(zip(names, normalise(picks / sizes).tolist())), extra={
        "picks": dict(zip(names, picks.astype(int).tolist())), "k": len(picked)})


def loss_estimate(loss_base: np.ndarray, loss_ft: np.ndarray, domain: np.ndarray,
                  names: list[str], weight: np.ndarray | None = None) -> Estimate:
    """Each domain's mean loss drop θ0 → θf, clipped at 0 and normalised."""
    weight = np.ones(len(domain)) if weight is None else weight
    drop = np.asarray(loss_base, np.float64) - np.asarray(loss_ft, np.float64)
    onehot = np.eye(len(names))[domain]
    mean_drop = (weight * drop) @ onehot / (weight @ onehot)
    return Estimate("loss", dict(zip(names, normalise(np.clip(mean_drop, 0, None)).tolist())),
                    extra={"mean_loss_drop": dict(zip(names, mean_drop.tolist()))})


def mean_absolute_error(estimate: dict[str, float], truth: dict[str, float]) -> float:
    """Mean over the true domains of |estimate − truth| (an "other" share counts as error only
    through what it takes from the true domains)."""
    return float(np.mean([abs(estimate.get(d, 0.0) - p) for d, p in truth.items()]))
