"""SELECT: greedily grow B so that the summed gradient S = Σ_{i∈B} g_i points along q.

Incremental form (method.md): with a_i = ⟨g_i, q⟩, n_i = ‖g_i‖² and c_i = ⟨g_i, S⟩,
cos(S + g_i, q) = (⟨S,q⟩ + a_i) / (‖q‖ √(‖S‖² + 2c_i + n_i)); after a pick only c needs
one pass over G. Scores are averaged over the P synthetic checkpoints.

Two ways to find each step's argmax:
- `exact`: one pass over G per step (c = G·S). A matrix held on the compute device is scored
  in one product (float16 / bfloat16 rows on a GPU without widening them, see
  rows.half_dots); a store that fits in memory is read into it once; otherwise G streams
  in blocks. Nothing syncs with the host inside the loop except for on-disk stores.
- `stochastic`: each step scores a fresh seeded sample of (N/K)·ln(1/ε) rows drawn uniformly
  among the unpicked ones (Mirzasoleiman et al. 2015); (1 − 1/e − ε) of the optimum in
  expectation for submodular objectives, a heuristic here.

What "exact" guarantees: c is a float32 (float64 for float64 input) d-term dot product, off
by at most γ_d·‖g_i‖·‖S‖ with γ_d = d·u/(1 − d·u); float32 products run in IEEE float32
(TF32 and CPU bfloat16 modes are turned off for the greedy), so a GPU and a CPU pick the
same rows unless two candidates' scores lie within that rounding. Half-precision rows are
scored exactly as their float32 widening would be (same bound): the picks are the greedy's
on the stored values, which are not the float32 gradients (docs/benchmarks.md: a float16
store shares ~80 % of its picks with a float32 one).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch
from tqdm.auto import tqdm

from .result import Selection
from .rows import Rows, TensorRows, as_rows, available_memory, dots

METHODS = ("exact", "stochastic")


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
        """Add row i (a 0-d tensor on the device) to B and S. Indexing with a 0-d tensor
        would read it on the host (a sync per pick), so a 1-element index is used."""
        i = i.view(1)
        g = self.rows.take(i, self.dtype, self.device)  # (P, 1, d)
        c_i = dots(g, self.s)[:, 0]
        self.taken.index_fill_(0, i, True)
        self.sq += self.align.index_select(1, i)[:, 0]
        self.ss += 2 * c_i + self.sqnorm.index_select(1, i)[:, 0]
        self.s += g[:, 0]
        self.fresh = False

    def cos(self) -> torch.Tensor:
        norm = self.qn * self.ss.clamp_min(0).sqrt()
        return torch.where(norm > 0, self.sq / norm.clamp_min(1e-30), 0.0).mean()

    def argmax(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, its score), both 0-d tensors on the device."""
        raise NotImplementedError


def _best(score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(position, value) of the maximum, ties to the lowest position (documented for
    torch.max), as new 0-d tensors on the device: `score[i]` would read i on the host and
    keep all of `score` alive as a view, one per pick."""
    top, i = score.max(dim=0)
    return i, top


class _Exact(_Greedy):
    def argmax(self):
        c = torch.zeros_like(self.sqnorm) if self.fresh else self.full_pass()
        return _best(self.scores(c).masked_fill_(self.taken, -torch.inf))


class _Stochastic(_Greedy):
    def __init__(self, *args, size: int, seed: int):
        super().__init__(*args)
        self.size = size
        self.rng = np.random.default_rng(seed)

    def candidates(self) -> torch.Tensor:
        """`size` rows drawn uniformly without replacement among the unpicked ones, sorted.

        A shuffled draw over all rows, with the picked ones dropped, is in random order a
        uniform sample of the unpicked rows, so its first `size` are one too (sorting before
        cutting, as this did once, keeps the low row numbers). Listing the unpicked rows
        instead would cost a pass over N per step."""
        n = len(self.taken)
        free = n - int(self.taken.sum())
        if self.size < free:
            extra = math.ceil(self.size * (n - free) / free) + 16  # enough survive, on average
            draw = torch.from_numpy(self.rng.choice(n, size=min(n, self.size + extra), replace=False))
            idx = draw.to(self.device)
            idx = idx[~self.taken[idx]]
            if len(idx) >= self.size:
                return idx[: self.size].sort().values
        free = torch.nonzero(~self.taken).squeeze(1)
        if self.size >= len(free):
            return free
        return free[torch.from_numpy(np.sort(self.rng.choice(len(free), self.size, replace=False)))
                    .to(self.device)]

    def argmax(self):
        idx = self.candidates()
        if self.fresh:
            c = torch.zeros(len(self.sq), len(idx), dtype=self.dtype, device=self.device)
        else:
            c = dots(self.rows.take(idx, self.dtype, self.device), self.s)
        i, score = _best(self.scores(c, idx))
        return idx.take(i), score


def stochastic_size(n: int, k: int, epsilon: float) -> int:
    """Rows scored per step: (N/K)·ln(1/ε), at least 1."""
    if not 0 < epsilon < 1:
        raise ValueError("epsilon must be in (0, 1)")
    return max(1, math.ceil(n / k * math.log(1 / epsilon)))


# Share of the free memory the whole matrix may take to be held there: on a GPU the rest is
# the O(N) state; in RAM the rest is also everything else the process and the machine run.
FIT = {"cuda": 0.7, "cpu": 0.5}


def _place(rows: Rows, device: torch.device, dtype: torch.dtype) -> Rows:
    """Hold the whole matrix on the compute device when it fits, so that a store is read
    once rather than once per pick; otherwise stream it in blocks. On a GPU it keeps its
    storage dtype (half-precision rows are scored as they are, at half the bytes); in RAM
    it is widened to the compute dtype when that fits too (a CPU would otherwise widen
    every block of every pass: 1.5x the time of a float32 pass, measured)."""
    if device.type == "cuda":
        free, wants = torch.cuda.mem_get_info(device)[0], [rows.dtype]
    elif device.type == "cpu":
        free, wants = available_memory(), [dtype, rows.dtype]
    else:
        return rows
    for want in dict.fromkeys(wants):
        if isinstance(rows, TensorRows) and rows.t.device == device and rows.t.dtype == want:
            return rows
        if rows.nbytes() // rows.dtype.itemsize * want.itemsize < FIT[device.type] * free:
            return rows.to(device, want)
    return rows


@contextmanager
def _ieee_float32():
    """float32 products in full float32 (no TF32 on GPUs, no bfloat16 on CPUs) while the
    greedy runs, whatever the caller set; the caller's setting is restored afterwards."""
    cuda, mkldnn = torch.backends.cuda.matmul, getattr(torch.backends.mkldnn, "matmul", None)
    if not hasattr(cuda, "fp32_precision"):  # torch < 2.9: only the legacy switch exists
        before = cuda.allow_tf32
        cuda.allow_tf32 = False
        try:
            yield
        finally:
            cuda.allow_tf32 = before
        return
    backends = [b for b in (cuda, mkldnn) if hasattr(b, "fp32_precision")]
    before = [b.fp32_precision for b in backends]  # the new API only: mixing the two raises
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
    dtype = dtype or (torch.float64 if rows.dtype == torch.float64 else torch.float32)
    rows = _place(rows, device, dtype)
    args = (rows, align, sqnorm, target_norm, dtype, device)
    with _ieee_float32():
        if method == "exact":
            state = _Exact(*args)
        else:
            state = _Stochastic(*args, size=stochastic_size(free, k, epsilon), seed=seed)
        if exclude is not None:
            state.taken |= exclude.to(device)  # never picked, never added to S
        # Picks, scores and the curve stay on the device until the end: no per-pick sync.
        # Written into preallocated tensors: K small tensors kept alive between the large
        # per-pick temporaries fragment the heap (RSS grew by 5 MB per pick, measured).
        picks = torch.empty(k, dtype=torch.long, device=device)
        gains, curve = torch.empty(2, k, dtype=dtype, device=device)
        for step in tqdm(range(k), desc=f"select ({method})", disable=not progress, unit="pick"):
            if reset_every and step and step % reset_every == 0:
                state.reset()
            i, gain = state.argmax()
            state.pick(i)
            picks[step], gains[step], curve[step] = i, gain, state.cos()
    stats = {"method": method}
    if isinstance(state, _Stochastic):
        stats.update(epsilon=epsilon, rows_per_step=state.size)
    picks, gains, curve = picks.tolist(), gains.tolist(), curve.tolist()
    return Selection("select-batched" if reset_every else "select", picks, gains, curve, stats)
