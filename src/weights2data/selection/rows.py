"""Row access to a (P, N, d) gradient matrix, in memory or in an on-disk store.

The greedy only ever needs two operations: a pass over all rows in bounded blocks, and
a gather of a few rows. Both hand back tensors in the compute dtype on the compute device,
whatever the storage dtype (float16 / bfloat16 stores are widened block by block, so
peak memory beyond O(N) scalars does not grow with N).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

BLOCK_BYTES = 1 << 26  # one widened block is at most 64 MiB


class Rows:
    """A (P, N, d) matrix that can be read in row blocks and gathered by row."""

    shape: tuple[int, int, int]
    dtype: torch.dtype  # storage dtype

    def blocks(self, dtype: torch.dtype, device: torch.device) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, (P, b, d) block) over all rows, in order, b fixed except the last."""
        raise NotImplementedError

    def take(self, idx: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The rows `idx` (1-D, any order) as a (P, m, d) tensor."""
        raise NotImplementedError

    def block_rows(self, dtype: torch.dtype) -> int:
        p, _, d = self.shape
        return max(1, BLOCK_BYTES // (p * d * torch.tensor([], dtype=dtype).element_size()))


class TensorRows(Rows):
    """Rows of a torch tensor (any float dtype, any device)."""

    def __init__(self, t: torch.Tensor):
        self.t = t
        self.shape = tuple(t.shape)
        self.dtype = t.dtype

    def blocks(self, dtype, device):
        step = self.block_rows(dtype)
        for start in range(0, self.shape[1], step):
            yield start, self.t[:, start : start + step].to(device, dtype)

    def take(self, idx, dtype, device):
        return self.t[:, idx.to(self.t.device)].to(device, dtype)


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
        for k, a in enumerate(self.arrays):
            for start in range(0, a.shape[1], step):
                yield int(self.starts[k]) + start, self._tensor(a[:, start : start + step]).to(device, dtype)

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

    def load(self, device: torch.device) -> TensorRows:
        """Everything in one tensor on `device`, still in the storage dtype."""
        t = torch.cat([self._tensor(a) for a in self.arrays], dim=1) if self.arrays else None
        return TensorRows(t.to(device))


def as_rows(x) -> Rows:
    return x if isinstance(x, Rows) else TensorRows(x)
