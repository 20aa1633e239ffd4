"""Exact per-domain moments of per-document gradients in parameter space.

Adam moves each coordinate by about lr·m/√v, a per-coordinate nonlinearity, so an Adam-aware
estimate needs each domain's mean gradient coordinate by coordinate, not projected rows. For a
linear layer and document i, G_i = Σ_t δ_t x̃_tᵀ, and a domain's weighted sum

    Σ_{i∈d} u_i G_i = Σ_{i∈d} Σ_t (u_i δ_t) x̃_tᵀ

is one (O × tokens)·(tokens × I') product per batch and domain: the cost of the layer's own
forward pass (for an LM head, Σ_t r_t h̃_tᵀ). The per-coordinate second moment Σ u_i G_i⊙G_i
needs each G_i formed, O·I' numbers per document on the kept rows.

Memory: P·D·O·I' float32 numbers per layer and moment (the demo's 49k×576 head, P = 3, four
domains: 1.4 GB). When that exceeds `budget` bytes, a seeded random subset of each layer's
output rows is kept (whole rows: a vocabulary sample for an LM head). Every estimator built on
these moments is a sum over coordinates, so a uniform sample of rows estimates it without bias.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..gradients import LayerSet, closed_form
from ..gradients.extract import Visit

DEFAULT_BUDGET = 1 << 30  # bytes for all moments together


@dataclass
class Moments:
    """Weighted means over each domain's documents of G_i (and G_i⊙G_i), at each checkpoint,
    on the kept rows of each layer, with the target q on the same coordinates."""

    names: list[str]  # domains
    alphas: list[float]
    first: dict[str, torch.Tensor]  # layer -> (P, D, r, I') Σ u_i G_i / Σ u_i
    second: dict[str, torch.Tensor] | None  # layer -> (P, D, r, I') Σ u_i G_i² / Σ u_i
    target: dict[str, torch.Tensor]  # layer -> (r, I') q on the kept rows
    rows: dict[str, torch.Tensor | None]  # layer -> kept output rows (None: all)
    q_norm2: float  # ‖q‖² over every coordinate of the layers
    coordinates: int  # kept
    total: int  # of the layers
    documents: torch.Tensor | None = None  # (D,) effective documents per domain, (Σu)²/Σu²

    def flat(self, which: str = "first", checkpoints: list[int] | None = None) -> torch.Tensor:
        """(D, n) the checkpoint-averaged moment over the kept coordinates of every layer."""
        src = self.first if which == "first" else self.second
        use = slice(None) if checkpoints is None else checkpoints
        return torch.cat([m[use].mean(0).flatten(1) for m in src.values()], dim=1)

    def flat_target(self) -> torch.Tensor:
        return torch.cat([t.flatten() for t in self.target.values()])

    def by_checkpoint(self, which: str = "first") -> torch.Tensor:
        """(P, D, n) the moment at each checkpoint over the kept coordinates of every layer."""
        src = self.first if which == "first" else self.second
        return torch.cat([m.flatten(2) for m in src.values()], dim=2)


def kept_rows(layers: LayerSet, n_domains: int, n_checkpoints: int, second: bool,
              budget: int = DEFAULT_BUDGET, seed: int = 0) -> dict[str, torch.Tensor | None]:
    """Rows kept per layer: all when every moment fits in `budget` bytes, else the same share
    of each layer's rows, drawn uniformly (seeded by the layer's name and `seed`)."""
    per_row = {la.name: la.shape[1] * n_domains * n_checkpoints * 4 * (2 if second else 1)
               for la in layers.layers}
    need = sum(per_row[la.name] * la.shape[0] for la in layers.layers)
    if need <= budget:
        return {la.name: None for la in layers.layers}
    share = budget / need
    out = {}
    for la in layers.layers:
        n = max(1, int(share * la.shape[0]))
        g = torch.Generator().manual_seed(seed + sum(map(ord, la.name)))
        out[la.name] = torch.randperm(la.shape[0], generator=g)[:n].sort().values
    return out


class Accumulator:
    """Sums u_i G_i (and u_i G_i²) per domain as `extract` shows it each batch's factors."""

    def __init__(self, layers: LayerSet, domain: np.ndarray, weight: np.ndarray, n_domains: int,
                 n_checkpoints: int, rows: dict[str, torch.Tensor | None], second: bool,
                 device: torch.device, dtype: torch.dtype = torch.float32):
        self.domain = torch.as_tensor(np.asarray(domain), dtype=torch.long)
        self.weight = torch.as_tensor(np.asarray(weight, dtype=np.float64)).float()
        self.rows, self.dtype, self.device = rows, dtype, device
        self.first, self.second = {}, ({} if second else None)
        for la in layers.layers:
            r = la.shape[0] if rows[la.name] is None else len(rows[la.name])
            shape = (n_checkpoints, n_domains, r, la.shape[1])
            self.first[la.name] = torch.zeros(shape, device=device)
            if second:
                self.second[la.name] = torch.zeros(shape, device=device)
        self.totals = _per_domain(self.domain, self.weight, n_domains)

    def visit(self, j: int, batch_rows: np.ndarray) -> Visit:
        """The visitor for checkpoint j's batch of corpus rows `batch_rows`."""
        docs = torch.as_tensor(np.asarray(batch_rows), dtype=torch.long)

        def add(name: str, s: slice, delta: torch.Tensor, x: torch.Tensor) -> None:
            keep = self.rows[name]
            if keep is not None:
                delta = delta[..., keep.to(delta.device)]
            dom = self.domain[docs[s]].to(delta.device)
            u = self.weight[docs[s]].to(delta.device)
            for k in dom.unique().tolist():
                m = dom == k
                left = (delta[m].float() * u[m, None, None]).flatten(0, 1)  # (tokens, r)
                self.first[name][j, k] += closed_form.mm(left.T, x[m].flatten(0, 1), self.dtype)
            if self.second is not None:
                for b in range(len(dom)):  # G_b formed once per document, on the kept rows
                    g = closed_form.mm(delta[b].T, x[b], self.dtype)
                    self.second[name][j, int(dom[b])] += u[b] * g.square()

        return add

    def result(self, names: list[str], alphas: list[float], layers: LayerSet) -> Moments:
        scale = (1.0 / self.totals.clamp_min(1e-30)).float()
        for moments in (self.first, self.second or {}):
            for m in moments.values():
                m *= scale.to(m.device)[None, :, None, None]
        target, coords = {}, 0
        for la in layers.layers:
            q = la.target.matrix()
            keep = self.rows[la.name]
            target[la.name] = (q if keep is None else q[keep.to(q.device)]).to(self.device)
            coords += target[la.name].numel()
        squares = _per_domain(self.domain, self.weight.double().square(), len(names))
        return Moments(names, list(alphas), self.first, self.second, target, dict(self.rows),
                       layers.target_norm() ** 2, coords,
                       sum(la.shape[0] * la.shape[1] for la in layers.layers),
                       self.totals.square() / squares.clamp_min(1e-30))


def _per_domain(domain: torch.Tensor, values: torch.Tensor, n_domains: int) -> torch.Tensor:
    """(n_domains,) float64 sums of `values` over each domain's documents."""
    return torch.zeros(n_domains, dtype=torch.float64).index_add_(0, domain, values.double())


class DomainMoments:
    """`select(visit=...)`'s factory: builds the Accumulator when it is shown the passes (models,
    layers, checkpoints), then `result()` gives the Moments."""

    def __init__(self, domain: np.ndarray, weight: np.ndarray, names: list[str],
                 second: bool = True, budget: int = DEFAULT_BUDGET, seed: int = 0):
        self.domain, self.weight, self.names = domain, weight, list(names)
        self.second, self.budget, self.seed = second, budget, seed
        self.acc: Accumulator | None = None
        self.passes = None

    def __call__(self, passes) -> Callable[[int, np.ndarray], Visit]:
        from ..checkpoints import DTYPES

        pair, layers = passes.pair, passes.layers
        rows = kept_rows(layers, len(self.names), len(passes.alphas), self.second, self.budget,
                         self.seed)
        self.passes = passes
        self.acc = Accumulator(layers, self.domain, self.weight, len(self.names),
                               len(passes.alphas), rows, self.second, pair.device,
                               DTYPES[pair.dtype])
        return self.acc.visit

    def result(self) -> Moments:
        if self.acc is None:
            raise RuntimeError("no gradient pass was visited")
        return self.acc.result(self.names, self.passes.alphas, self.passes.layers)


def domain_moments(passes, tokens, labels, domain: np.ndarray, weight: np.ndarray,
                   names: list[str], second: bool = True, budget: int = DEFAULT_BUDGET,
                   seed: int = 0, progress: bool = True) -> Moments:
    """One pass over the corpus at every checkpoint of `passes` (pipeline._Passes: models,
    framing, layers, checkpoints, batch sizes), summing exact gradients per domain."""
    from ..gradients import extract

    visit = DomainMoments(domain, weight, names, second, budget, seed)
    extract(passes.framing, passes.path, tokens, labels, passes.layers, passes.sketch,
            passes.alphas, passes.batch_tokens["gradients"], passes.max_docs, progress,
            visit=visit(passes))
    return visit.result()
