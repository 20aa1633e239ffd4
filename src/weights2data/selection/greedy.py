"""SELECT: greedily grow B so that the summed gradient S = Σ_{i∈B} g_i points along q.

Incremental form (method.md): with a_i = ⟨g_i, q⟩, n_i = ‖g_i‖² and c_i = ⟨g_i, S⟩,
cos(S + g_i, q) = (⟨S,q⟩ + a_i) / (‖q‖ √(‖S‖² + 2c_i + n_i)); after a pick only c needs
one pass over G. Scores are averaged over the P synthetic checkpoints.

Three ways to find each step's argmax:
- `exact`: one pass over G per step (c = G·S, block by block).
- `lazy`: the same picks, usually without the pass. Between refreshes c_i moves by at most
  √n_i · Σ√n_picked (Cauchy–Schwarz), which bounds every stale score; only rows whose bound
  reaches the best exact score are refreshed. Steps where two candidates are closer than the
  rounding error of c fall back to the exact pass, so the selection is the exact one.
- `stochastic`: each step scores a fresh seeded random subset of (N/K)·ln(1/ε) unpicked rows
  (Mirzasoleiman et al. 2015); (1 − 1/e − ε) of the optimum in expectation for submodular
  objectives, a heuristic here.

State shared by all three is updated the same way (⟨S,q⟩ and ‖S‖² from the exact a_i, n_i
and one c of the picked row), so `lazy` reproduces `exact` bit for bit.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch
from tqdm.auto import tqdm

from .result import Selection
from .rows import Rows, TensorRows, as_rows, available_memory, dots

METHODS = ("exact", "lazy", "stochastic")
_FIRST = 64  # rows refreshed first in a lazy step (the best bounds)


def _scores(sq, ss, c, align, sqnorm, target_norm) -> torch.Tensor:
    """mean_j cos(S_j + g_ji, q) from the scalars; (P, m) inputs -> (m,)."""
    denom = target_norm * (ss.unsqueeze(1) + 2 * c + sqnorm).clamp_min(0).sqrt()
    cos = torch.where(denom > 0, (sq.unsqueeze(1) + align) / denom.clamp_min(1e-30), 0.0)
    return cos.mean(0)


class _Greedy:
    """The state of one greedy run; subclasses decide how a step finds its argmax."""

    def __init__(self, rows: Rows, align, sqnorm, target_norm, dtype, device):
        self.rows, self.dtype, self.device = rows, dtype, device
        p, n, d = rows.shape
        self.align = align.to(device, dtype)
        self.sqnorm = sqnorm.to(device, dtype)
        self.qn = float(target_norm)
        self.s = torch.zeros(p, d, dtype=dtype, device=device)  # S, mapped like the rows
        self.sq = torch.zeros(p, dtype=dtype, device=device)  # ⟨S, q⟩ (exact)
        self.ss = torch.zeros(p, dtype=dtype, device=device)  # ‖S‖² (exact n, mapped c)
        self.taken = torch.zeros(n, dtype=torch.bool, device=device)
        self.fresh = True  # S = 0: every c is exactly 0

    def reset(self) -> None:
        self.s.zero_(), self.sq.zero_(), self.ss.zero_()
        self.fresh = True

    def full_pass(self) -> torch.Tensor:
        """c = G·S for every row; (P, N)."""
        return self.rows.dots(self.s, self.dtype, self.device)

    def scores(self, c, idx=None) -> torch.Tensor:
        a = self.align if idx is None else self.align[:, idx]
        n = self.sqnorm if idx is None else self.sqnorm[:, idx]
        return _scores(self.sq, self.ss, c, a, n, self.qn)

    def pick(self, i: torch.Tensor) -> None:
        """Add row i (a 0-d tensor on the device: no host synchronisation) to B and S."""
        g = self.rows.take(i.view(1), self.dtype, self.device)  # (P, 1, d)
        c_i = dots(g, self.s)[:, 0]
        self.taken[i] = True
        self.sq += self.align[:, i]
        self.ss += 2 * c_i + self.sqnorm[:, i]
        self.s += g[:, 0]
        self.fresh = False

    def cos(self) -> torch.Tensor:
        norm = self.qn * self.ss.clamp_min(0).sqrt()
        return torch.where(norm > 0, self.sq / norm.clamp_min(1e-30), 0.0).mean()

    def argmax(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, its score), both 0-d tensors on the device."""
        raise NotImplementedError


def _best(score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """argmax with ties to the lowest position (documented for torch.argmax), on the device."""
    i = torch.argmax(score)
    return i, score[i]


class _Exact(_Greedy):
    def argmax(self):
        c = torch.zeros_like(self.sqnorm) if self.fresh else self.full_pass()
        return _best(self.scores(c).masked_fill_(self.taken, -torch.inf))


class _Lazy(_Greedy):
    """Exact picks from stale c plus a Cauchy–Schwarz bound on how far each c has moved.

    A row refreshed when the sum was S_t has c_i(now) − c_i(t) = ⟨g_i, S − S_t⟩, and
    |⟨g_i, S − S_t⟩| ≤ ‖g_i‖·‖S − S_t‖ ≤ ‖g_i‖·Σ‖g_picked since t‖ (method.md's bound).
    Gradients share a few dominant directions, so the bound is tightened by splitting off a
    rank-r basis U (from a sample of rows): the part inside U is computed exactly from
    Uᵀg_i (N·r numbers), only the rest is bounded: ‖g_i − UUᵀg_i‖·‖(S − S_t) − UUᵀ(S − S_t)‖.
    The sums S_t are kept, one per pick: O(K·P·d) memory, independent of N.
    """

    def __init__(self, *args, k: int, rank: int = 16, sample: int = 2048):
        super().__init__(*args)
        p, n = self.sqnorm.shape
        self.u = self._basis(rank, sample)  # (P, d, r), orthonormal columns
        # One pass: norms of the rows as stored (c lives in that space, so its bound does),
        # their coordinates in U, and the norm of what U misses.
        self.root_n = torch.empty(p, n, dtype=self.dtype, device=self.device)
        self.perp_n = torch.empty(p, n, dtype=self.dtype, device=self.device)
        self.z = torch.empty(p, n, self.u.shape[2], dtype=self.dtype, device=self.device)
        for start, block in self.rows.blocks(self.dtype, self.device):
            stop = start + block.shape[1]
            z = torch.bmm(block, self.u)
            self.z[:, start:stop] = z
            self.root_n[:, start:stop] = block.norm(dim=2)
            self.perp_n[:, start:stop] = (block - torch.bmm(z, self.u.transpose(1, 2))).norm(dim=2)
        self.c = torch.zeros(p, n, dtype=self.dtype, device=self.device)
        self.snaps = torch.zeros(2 * k + 1, *self.s.shape, dtype=self.dtype, device=self.device)
        self.t = 0  # snaps[t] is the current S
        self.epoch = torch.zeros(n, dtype=torch.long, device=self.device)  # snap of each row's c
        # A d-term dot product in this dtype is off by at most γ_d·‖g_i‖·‖S‖ (Higham,
        # γ_d = d·u/(1 − d·u), u the unit roundoff), whatever the kernel's summation order:
        # it covers rounding in stale c and in the bound itself.
        u = torch.finfo(self.dtype).eps / 2
        d = self.s.shape[1]
        self.rel = d * u / (1 - d * u)
        self.full_passes = 0
        self.refreshed = 0
        # Where the bound does not separate the candidates (every pick reshuffles the
        # ranking), bounding costs more than it saves: then run plain passes for a while.
        self.work: list[float] = []  # rows touched per recent step, as a fraction of N
        self.plain_until = 0

    def _basis(self, rank: int, sample: int) -> torch.Tensor:
        """Top-`rank` right singular vectors of evenly spaced rows (seeded randomised SVD)."""
        p, n, d = self.rows.shape
        if d <= rank + 8:
            return torch.eye(d, dtype=self.dtype, device=self.device).expand(p, d, d).contiguous()
        idx = torch.linspace(0, n - 1, min(n, sample)).round().long().unique()
        x = self.rows.take(idx, self.dtype, self.device)  # (P, m, d)
        omega = torch.randn(p, d, rank + 8, generator=torch.Generator().manual_seed(0))
        q, _ = torch.linalg.qr(torch.bmm(x, omega.to(self.device, self.dtype)))
        _, _, vh = torch.linalg.svd(torch.bmm(q.transpose(1, 2), x), full_matrices=False)
        return vh[:, :rank].transpose(1, 2).contiguous()

    def _snapshot(self) -> None:
        self.t += 1
        self.snaps[self.t] = self.s

    def reset(self):
        super().reset()
        self._snapshot()
        self.epoch.fill_(self.t)
        self.c.zero_()

    def pick(self, i):
        super().pick(i)
        self._snapshot()

    def _upper(self) -> torch.Tensor:
        """An upper bound on every row's exact score; (N,)."""
        used, where = torch.unique(self.epoch, return_inverse=True)
        delta = self.s - self.snaps[used]  # S − S_t for the snapshots in use, (T, P, d)
        w = torch.einsum("tpd,pdr->tpr", delta, self.u)
        perp = (delta - torch.einsum("tpr,pdr->tpd", w, self.u)).norm(dim=2)  # (T, P)
        full = delta.norm(dim=2)
        inside = (self.z * w[where].transpose(0, 1)).sum(2)  # ⟨Uᵀg_i, Uᵀ(S − S_t)⟩, (P, N)
        snorm = self.s.norm(dim=1, keepdim=True)
        center = self.c + inside
        rad = (self.perp_n * perp[where].T * (1 + self.rel)
               + self.rel * self.root_n * (snorm + full[where].T))
        num = self.sq.unsqueeze(1) + self.align
        base = self.ss.unsqueeze(1) + self.sqnorm
        # ‖S + g‖² is smallest at the lowest c; a positive numerator then gives the biggest cos.
        den_lo, den_hi = base + 2 * (center - rad), base + 2 * (center + rad)
        hi = torch.where(num >= 0, num / (self.qn * den_lo.clamp_min(0).sqrt()),
                         num / (self.qn * den_hi.clamp_min(0).sqrt()))
        hi = torch.where((den_lo <= 0) | hi.isnan(), torch.inf, hi)  # no usable bound: refresh
        return hi.mean(0)

    def _error(self, c, idx) -> torch.Tensor:
        """How far rounding in c can move each refreshed score; (m,)."""
        den = (self.ss.unsqueeze(1) + 2 * c + self.sqnorm[:, idx]).clamp_min(1e-30)
        term = (self.sq.unsqueeze(1) + self.align[:, idx]).abs() / (self.qn * den.sqrt())
        snorm = self.s.norm(dim=1, keepdim=True)
        return (term * 2 * self.rel * self.root_n[:, idx] * snorm / den).mean(0)

    def _refresh(self, idx: torch.Tensor) -> None:
        self.c[:, idx] = dots(self.rows.take(idx, self.dtype, self.device), self.s)
        self.epoch[idx] = self.t
        self.refreshed += len(idx)

    def _exact_step(self):
        self.full_passes += 1
        self.c = self.full_pass()
        self.epoch.fill_(self.t)
        score = self.scores(self.c)
        score[self.taken] = -torch.inf
        return _best(score)

    def argmax(self):
        n = len(self.taken)
        if self.fresh:  # every c is exactly 0: the bound is the score
            score = self.scores(torch.zeros_like(self.sqnorm))
            score[self.taken] = -torch.inf
            return _best(score)
        step = int(self.taken.sum())
        if step < self.plain_until:
            return self._exact_step()
        before = (self.refreshed, self.full_passes)
        pick = self._lazy_argmax(n)
        # a gathered row costs about 3 rows of a pass; the bound itself about a tenth of one
        self.work.append(3 * (self.refreshed - before[0]) / n + self.full_passes - before[1])
        if len(self.work) >= 8 and sum(self.work[-8:]) / 8 > 0.1:
            self.plain_until, self.work = step + 32, []
        return pick

    def _lazy_argmax(self, n: int):
        upper = self._upper()
        upper[self.taken] = -torch.inf
        done = torch.zeros(n, dtype=torch.bool, device=self.device)
        todo = torch.topk(upper, max(1, min(_FIRST, n // 32))).indices
        todo = todo[upper[todo] > -torch.inf]
        while len(todo):
            if int(done.sum()) + len(todo) > max(n // 8, _FIRST):  # the bound is too loose to pay off: one pass
                return self._exact_step()
            self._refresh(todo)
            done[todo] = True
            cand = torch.nonzero(done).squeeze(1)
            score = self.scores(self.c[:, cand], cand)
            err = self._error(self.c[:, cand], cand)
            j = int(torch.argmax(score - err))
            floor = score[j] - err[j]  # the best row's score is at least this
            todo = torch.nonzero(~done & (upper >= floor)).squeeze(1)
        # Every unrefreshed row is now provably below `floor`; a refreshed rival whose score
        # could cross the best's within rounding sends the step to the exact pass.
        rival = score + err
        rival[j] = -torch.inf
        if bool((rival >= floor).any()):
            return self._exact_step()
        return cand[j], score[j]


class _Stochastic(_Greedy):
    def __init__(self, *args, size: int, seed: int):
        super().__init__(*args)
        self.size = size
        self.rng = np.random.default_rng(seed)

    def candidates(self) -> torch.Tensor:
        """`size` rows drawn uniformly without replacement among the unpicked ones, sorted."""
        free = torch.nonzero(~self.taken).squeeze(1)
        if self.size >= len(free):
            return free
        draw = np.sort(self.rng.choice(len(free), size=self.size, replace=False))
        return free[torch.from_numpy(draw).to(self.device)]

    def argmax(self):
        idx = self.candidates()
        if self.fresh:
            c = torch.zeros(len(self.sq), len(idx), dtype=self.dtype, device=self.device)
        else:
            c = dots(self.rows.take(idx, self.dtype, self.device), self.s)
        i, score = _best(self.scores(c, idx))
        return idx[i], score


def stochastic_size(n: int, k: int, epsilon: float) -> int:
    """Rows scored per step: (N/K)·ln(1/ε), at least 1."""
    if not 0 < epsilon < 1:
        raise ValueError("epsilon must be in (0, 1)")
    return max(1, math.ceil(n / k * math.log(1 / epsilon)))


# Share of the free memory the whole matrix may take to be held there: on a GPU the rest is
# the O(N) state; in RAM the rest is also everything else the process and the machine run.
FIT = {"cuda": 0.7, "cpu": 0.5}


def _place(rows: Rows, device: torch.device) -> Rows:
    """Hold the whole matrix on the compute device when it fits, so that a store is read
    once rather than once per pick; otherwise stream it in blocks."""
    if isinstance(rows, TensorRows) and rows.t.device == device:
        return rows
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    elif device.type == "cpu":
        free = available_memory()
    else:
        return rows
    return rows.to(device) if rows.nbytes() < FIT[device.type] * free else rows


@contextmanager
def _ieee_float32():
    """float32 products in full float32 (no TF32 on GPUs, no bfloat16 on CPUs) while the
    greedy runs, whatever the caller set; the caller's setting is restored afterwards."""
    backends = [torch.backends.cuda.matmul, torch.backends.mkldnn.matmul]
    before = [b.fp32_precision for b in backends]
    try:
        for b in backends:
            b.fp32_precision = "ieee"
        yield
    finally:
        for b, value in zip(backends, before):
            b.fp32_precision = value


@torch.no_grad()
def greedy(
    grads,
    align: torch.Tensor,
    sqnorm: torch.Tensor,
    target_norm: float,
    k: int,
    reset_every: int | None = None,
    progress: bool = False,
    method: str = "exact",
    epsilon: float = 0.01,
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    exclude: torch.Tensor | None = None,
) -> Selection:
    """Pick k rows of `grads` (P, N, d) by the SELECT greedy; `reset_every` = b gives
    select-batched (S restarts every b picks). Ties go to the lower row number.

    `grads` is a tensor (any float dtype, any device) or a `Rows` (an on-disk store). The
    arithmetic is float64 for float64 input and float32 otherwise (`dtype` overrides);
    `device` defaults to the tensor's. `exclude` (N,) bool marks rows never to pick.
    """
    if method not in METHODS:
        raise ValueError(f"unknown greedy method {method!r}; choose from {', '.join(METHODS)}")
    rows = as_rows(grads)
    p, n, _ = rows.shape
    free = n if exclude is None else n - int(exclude.sum())
    if not 1 <= k <= free:
        raise ValueError(f"k = {k} must be between 1 and the number of pickable rows ({free})")
    if device is None:
        device = rows.t.device if isinstance(rows, TensorRows) else torch.device("cpu")
    device = torch.device(device)
    rows = _place(rows, device)
    dtype = dtype or (torch.float64 if rows.dtype == torch.float64 else torch.float32)
    args = (rows, align, sqnorm, target_norm, dtype, device)
    with _ieee_float32():
        if method == "exact":
            state = _Exact(*args)
        elif method == "lazy":
            state = _Lazy(*args, k=k)
        else:
            state = _Stochastic(*args, size=stochastic_size(free, k, epsilon), seed=seed)
        if exclude is not None:
            state.taken |= exclude.to(device)  # never picked, never added to S
        # Picks, scores and the curve stay on the device until the end: no per-pick sync.
        picks, gains, curve = [], [], []
        for step in tqdm(range(k), desc=f"select ({method})", disable=not progress, unit="pick"):
            if reset_every and step and step % reset_every == 0:
                state.reset()
            i, gain = state.argmax()
            state.pick(i)
            picks.append(i)
            gains.append(gain)
            curve.append(state.cos())
    stats = {"method": method}
    if isinstance(state, _Lazy):
        stats.update(full_passes=state.full_passes, rows_refreshed=state.refreshed)
    if isinstance(state, _Stochastic):
        stats.update(epsilon=epsilon, rows_per_step=state.size)
    picks, gains, curve = (torch.stack(x).tolist() for x in (picks, gains, curve))
    return Selection("select-batched" if reset_every else "select", picks, gains, curve, stats)
