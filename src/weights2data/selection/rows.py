"""Row access to a (P, N, d) gradient matrix, in memory or in an on-disk store.

The greedy needs three operations: c = G·S for every row (one pass), a gather of a few
rows, and moving the whole matrix to the compute device when it fits. A matrix already on
the compute device is scored in one product; anything else goes in bounded blocks, widened
to the compute dtype block by block (float16 / bfloat16 stores stay half-size in memory).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

BLOCK_BYTES = 1 << 26  # one widened block is at most 64 MiB
HALF = (torch.float16, torch.bfloat16)


class Rows:
    """A (P, N, d) matrix that can be read in row blocks and gathered by row."""

    shape: tuple[int, int, int]
    dtype: torch.dtype  # storage dtype

    def blocks(self, dtype: torch.dtype, device: torch.device) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, (P, b, d) block) over all rows, in order, b fixed except the last.
        A block may live in a buffer that the next one reuses: use it before asking for more."""
        raise NotImplementedError

    def take(self, idx: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The rows `idx` (1-D, any order) as a (P, m, d) tensor."""
        raise NotImplementedError

    def nbytes(self) -> int:
        raise NotImplementedError

    def to(self, device: torch.device, dtype: torch.dtype | None = None) -> TensorRows:
        """The whole matrix in one tensor on `device`, in `dtype` (default: the storage's)."""
        raise NotImplementedError

    def dots(self, s: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """⟨g_ji, s_j⟩ for every row, s (P, d) in `dtype` on `device`; (P, N)."""
        c = torch.empty(self.shape[:2], dtype=dtype, device=device)
        for start, block in self.blocks(dtype, device):
            c[:, start : start + block.shape[1]] = dots(block, s)
        return c

    def block_rows(self, dtype: torch.dtype) -> int:
        p, _, d = self.shape
        return max(1, BLOCK_BYTES // (p * d * torch.tensor([], dtype=dtype).element_size()))


def dots(rows: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """⟨g_ji, s_j⟩ for a (P, m, d) block of the dtype of s; (P, m)."""
    return torch.bmm(rows, s.unsqueeze(2)).squeeze(2)


def split(s: torch.Tensor, half: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """s (P, d) float32 as scale·(h1 + h2 + h3), h (P, d, 3) in `half`, scale (P, 1) a power of 2.

    Each part holds the next 8 (bfloat16) or 11 (float16) bits of the remainder, so three
    parts carry float32's 24; the scale keeps float16 parts in range. A product of two
    half-precision numbers is exact in float32, so a half × half product accumulated in
    float32 gives G·s to float32 rounding, reading G at half size. No host synchronisation.
    """
    top = s.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    scale = torch.exp2(torch.floor(torch.log2(top)) - 14)  # largest part near 2^14 < 65504
    rest = s / scale
    parts = []
    for _ in range(3):
        parts.append(rest.to(half))
        rest = rest - parts[-1].float()
    return torch.stack(parts, dim=2), scale


def half_dots(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """⟨g_ji, s_j⟩ in float32 for a float16/bfloat16 (P, m, d) t without widening t; (P, m)."""
    parts, scale = split(s, t.dtype)
    if _fp32_out(t.device):
        c = torch.bmm(t, parts, out_dtype=torch.float32)  # CUDA: half in, float32 accumulate
    else:  # the same arithmetic, widened (CPU has no half-in float32-out product)
        c = torch.bmm(t.float(), parts.float())
    return c.sum(2) * scale


@functools.cache
def _fp32_out(device: torch.device) -> bool:
    """Whether this torch has a half-precision product with float32 output on `device`."""
    if device.type == "cpu":
        return False
    x = torch.zeros(1, 2, 2, dtype=torch.bfloat16, device=device)
    try:
        return torch.bmm(x, x, out_dtype=torch.float32).dtype == torch.float32
    except (RuntimeError, TypeError):
        return False


def split_pays(t: torch.Tensor, dtype: torch.dtype) -> bool:
    """Score a resident half-precision matrix by `half_dots` where the device has a
    half-in, float32-out product (GPUs), rather than widening it block by block (CPUs)."""
    return t.dtype in HALF and dtype == torch.float32 and _fp32_out(t.device)


class TensorRows(Rows):
    """Rows of a torch tensor (any float dtype, any device)."""

    def __init__(self, t: torch.Tensor):
        self.t = t
        self.shape = tuple(t.shape)
        self.dtype = t.dtype

    def blocks(self, dtype, device):
        step = self.block_rows(dtype)
        buf = _Buffer(dtype, device)
        for start in range(0, self.shape[1], step):
            yield start, buf.fill(self.t[:, start : start + step])

    def dots(self, s, dtype, device):
        if self.t.device == device and self.t.dtype == dtype:  # one product, no copies
            return dots(self.t, s)
        if self.t.device == device and split_pays(self.t, dtype):
            return half_dots(self.t, s)
        return super().dots(s, dtype, device)

    def take(self, idx, dtype, device):
        return self.t[:, idx.to(self.t.device)].to(device, dtype)

    def nbytes(self) -> int:
        return self.t.nbytes

    def to(self, device, dtype=None):
        return TensorRows(self.t.to(device, dtype or self.dtype))


class ArrayRows(Rows):
    """Rows of one or more numpy arrays (memory maps) of shape (P, n_s, d), concatenated
    along N. bfloat16 arrays are stored as uint16 and reinterpreted."""

    def __init__(self, arrays: list[np.ndarray], dtype: torch.dtype):
        self.arrays = arrays
        self.dtype = dtype
        p, _, d = arrays[0].shape
        self.starts = np.cumsum([0] + [a.shape[1] for a in arrays])
        self.shape = (p, int(self.starts[-1]), d)

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.array(a))  # a writable copy of just this block
        return t.view(torch.bfloat16) if self.dtype == torch.bfloat16 else t

    def blocks(self, dtype, device):
        step = self.block_rows(dtype)
        host, buf = _Buffer(self.dtype, torch.device("cpu")), _Buffer(dtype, device)
        for k, a in enumerate(self.arrays):
            for start in range(0, a.shape[1], step):
                raw = host.fill_from(a[:, start : start + step])
                yield int(self.starts[k]) + start, buf.fill(raw)

    def take(self, idx, dtype, device):
        idx = idx.cpu().numpy()
        shard = np.searchsorted(self.starts, idx, side="right") - 1
        out = torch.empty(self.shape[0], len(idx), self.shape[2], dtype=dtype, device=device)
        for k in np.unique(shard):
            where = np.nonzero(shard == k)[0]
            local = idx[where] - self.starts[k]
            order = np.argsort(local)  # sorted reads are kinder to a memory map
            rows = self._tensor(self.arrays[k][:, local[order]])
            out[:, torch.from_numpy(where[order]).to(device)] = rows.to(device, dtype)
        return out

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)

    def to(self, device, dtype=None):
        """Read every shard once into one tensor on `device` (no second host copy)."""
        dtype = dtype or self.dtype
        out = torch.empty(self.shape, dtype=dtype, device=device)
        if device.type == "cpu" and dtype == self.dtype:
            for a, start, stop in zip(self.arrays, self.starts[:-1], self.starts[1:]):
                _numpy(out[:, start:stop])[...] = a.view(_numpy(out).dtype)
            return TensorRows(out)
        for start, block in self.blocks(dtype, device):
            out[:, start : start + block.shape[1]] = block
        return TensorRows(out)


class _Buffer:
    """One block-sized tensor, refilled for every block: a fresh 64 MiB allocation per block
    would page-fault its way through every pass (5x the cost of the copy, measured in a VM)."""

    def __init__(self, dtype: torch.dtype, device: torch.device):
        self.dtype, self.device, self.t = dtype, device, None

    def _out(self, shape) -> torch.Tensor:
        if self.t is None:  # the first block is the largest
            self.t = torch.empty(*shape, dtype=self.dtype, device=self.device)
        return self.t[:, : shape[1]]

    def fill(self, src: torch.Tensor) -> torch.Tensor:
        if src.dtype == self.dtype and src.device == self.device:
            return src  # already as wanted: a view, no copy
        return self._out(src.shape).copy_(src)

    def fill_from(self, a: np.ndarray) -> torch.Tensor:
        """A numpy block (a memory map's slice) copied in, without a temporary."""
        out = self._out(a.shape)
        _numpy(out)[...] = a.view(_numpy(out).dtype)
        return out


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor; bfloat16 (which numpy lacks) as its 16 bits."""
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()


def as_rows(x) -> Rows:
    return x if isinstance(x, Rows) else TensorRows(x)


def available_memory() -> int:
    """Bytes this process can still allocate: MemAvailable, capped by a cgroup (v2) limit."""
    free = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except OSError:
        pass
    if not free and hasattr(os, "sysconf"):
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            free = min(free, int(limit) - used) if free else int(limit) - used
    except (OSError, ValueError):
        pass
    return max(0, free)
