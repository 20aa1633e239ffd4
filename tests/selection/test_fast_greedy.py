"""The greedy on any storage (memory, memory map, half precision), its speed paths, and the
stochastic greedy (seeded, uniform, close to exact)."""

import importlib
import os

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from weights2data.selection import greedy
from weights2data.selection.greedy import stochastic_size
from weights2data.selection.rows import ArrayRows, TensorRows, available_memory, half_dots


def _problem(p, n, d, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(d, generator=g)
    # like real gradients: a few shared directions plus noise, some rows aligned with q and
    # some opposed, norms spread over an order of magnitude
    shared = torch.randn(6, d, generator=g)
    weight = torch.randn(1, n, 1, generator=g) * 0.3
    scale = torch.rand(1, n, 1, generator=g) * 2 + 0.2
    mix = torch.randn(p, n, 6, generator=g) @ shared
    grads = (mix + 0.5 * torch.randn(p, n, d, generator=g) + weight * q) * scale
    grads = grads.to(dtype)
    exact = grads.double()
    align = torch.einsum("pnd,d->pn", exact, q.double())
    return grads, align, exact.square().sum(-1), float(q.norm())


def _memmap_rows(tmp_path, grads, bounds) -> ArrayRows:
    """`grads` written as one .npy shard per (start, stop) and memory-mapped back, as a store
    keeps them (bfloat16 as its uint16 bits)."""
    arrays = []
    for k, (a, b) in enumerate(bounds):
        part = grads[:, a:b]
        raw = (part.view(torch.uint16) if grads.dtype == torch.bfloat16 else part).numpy()
        mm = np.lib.format.open_memmap(tmp_path / f"{k}.npy", "w+", raw.dtype, raw.shape)
        mm[:] = raw
        mm.flush()
        arrays.append(np.load(tmp_path / f"{k}.npy", mmap_mode="r"))
    return ArrayRows(arrays, grads.dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_memory_map_in_blocks(tmp_path, monkeypatch, dtype):
    grads, align, sqnorm, qn = _problem(2, 1500, 40, seed=3, dtype=dtype)
    rows = _memmap_rows(tmp_path, grads, [(0, 600), (600, 1100), (1100, 1500)])  # three shards
    monkeypatch.setattr("weights2data.selection.rows.BLOCK_BYTES", 40 * 2 * 4 * 128)  # 128-row blocks
    in_memory = greedy(grads, align, sqnorm, qn, 25, method="exact")
    cpu = torch.device("cpu")
    assert torch.equal(rows.to(cpu).t, grads)  # read into memory bit for bit
    assert torch.equal(rows.to(cpu, torch.float32).t, grads.float())  # or widened
    module = importlib.import_module("weights2data.selection.greedy")
    placed = []
    place = module._place
    monkeypatch.setattr(module, "_place", lambda *a: placed.append(place(*a)) or placed[-1])
    # What the greedy holds (None: streams the store): the store and the tensor, widened to
    # float32 when that fits; as stored when only that fits; the store streamed otherwise.
    only_stored = 1.5 * rows.nbytes() / module.FIT["cpu"]
    for free, from_store, from_tensor in [(None, torch.float32, torch.float32),
                                          (only_stored, dtype, dtype), (0, None, dtype)]:
        if free is not None:
            monkeypatch.setattr(module, "available_memory", lambda free=free: free)
        for source, expected in ((rows, from_store), (grads, from_tensor)):
            assert greedy(source, align, sqnorm, qn, 25).indices == in_memory.indices
            held = placed[-1]
            assert (held.t.dtype if isinstance(held, TensorRows) else None) == expected


def test_stochastic_is_seeded_and_near_exact():
    grads, align, sqnorm, qn = _problem(1, 4000, 32, seed=7)
    k = 50
    a = greedy(grads, align, sqnorm, qn, k, method="stochastic", epsilon=0.01, seed=1)
    assert a.indices == greedy(grads, align, sqnorm, qn, k, method="stochastic", epsilon=0.01,
                               seed=1).indices
    assert a.indices != greedy(grads, align, sqnorm, qn, k, method="stochastic", epsilon=0.01,
                               seed=2).indices
    assert len(set(a.indices)) == k
    exact = greedy(grads, align, sqnorm, qn, k, method="exact")
    assert a.curve[-1] >= 0.97 * exact.curve[-1]
    assert a.stats["rows_per_step"] == stochastic_size(4000, k, 0.01) == 369


def test_stochastic_with_whole_corpus_per_step_is_exact():
    grads, align, sqnorm, qn = _problem(2, 300, 16, seed=2)
    exact = greedy(grads, align, sqnorm, qn, 20, method="exact")
    # ε tiny: (N/K)·ln(1/ε) ≥ N, so every unpicked row is scored each step
    sto = greedy(grads, align, sqnorm, qn, 20, method="stochastic", epsilon=1e-9)
    assert sto.indices == exact.indices


def test_bad_arguments():
    grads, align, sqnorm, qn = _problem(1, 10, 4, seed=0)
    with pytest.raises(ValueError, match="unknown greedy"):
        greedy(grads, align, sqnorm, qn, 3, method="fast")
    with pytest.raises(ValueError, match="between 1"):
        greedy(grads, align, sqnorm, qn, 11)
    with pytest.raises(ValueError, match="epsilon"):
        stochastic_size(10, 3, 1.5)


class _Recording(TensorRows):
    """In-memory rows that record every gather, and the matmul precision at that moment."""

    def __init__(self, t):
        super().__init__(t)
        self.taken, self.precision = [], []

    def take(self, idx, dtype, device):
        self.taken.append(idx.clone())
        self.precision.append((torch.backends.cuda.matmul.fp32_precision,
                               torch.backends.mkldnn.matmul.fp32_precision))
        return super().take(idx, dtype, device)


def test_stochastic_scores_every_decile_alike():
    """Each step must draw uniformly among the unpicked rows: per index decile, the number of
    times a row is scored matches its expectation within 4.5 standard deviations."""
    n, k, eps = 10_000, 400, 0.01
    grads, align, sqnorm, qn = _problem(1, n, 8, seed=11)
    exclude = torch.zeros(n, dtype=torch.bool)
    exclude[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:2000]] = True
    rows = _Recording(grads)
    sel = greedy(rows, align, sqnorm, qn, k, method="stochastic", epsilon=eps, seed=3,
                 exclude=exclude)
    size = sel.stats["rows_per_step"]
    decile = torch.arange(n) * 10 // n
    seen, mean, var = torch.zeros(10), torch.zeros(10), torch.zeros(10)
    taken, sizes = exclude.clone(), set()
    for step, pick in enumerate(sel.indices):
        if step:  # step 0 scores with S = 0 and gathers nothing; later steps gather, then pick
            scored, picked = rows.taken[2 * step - 1], rows.taken[2 * step]
            assert int(picked) == pick
            sizes.add(len(scored))
            seen += torch.bincount(decile[scored], minlength=10)
            free = torch.bincount(decile[~taken], minlength=10).double()
            f, share = free.sum(), free / free.sum()
            mean += size * share  # hypergeometric: size draws without replacement from f rows
            var += size * share * (1 - share) * (f - size) / (f - 1)
        taken[pick] = True
    z = (seen - mean) / var.sqrt()
    assert z.abs().max() < 4.5, z  # p < 1e-4 over the 10 deciles if the draw is uniform
    assert sizes == {size}


def test_float32_products_are_ieee_inside_the_greedy_and_restored_after():
    """TF32 (GPU) or bfloat16 (CPU) float32 products would change picks, so the greedy turns
    them off for its own products and gives the caller's setting back."""
    grads, align, sqnorm, qn = _problem(1, 200, 16, seed=4)
    before = torch.backends.mkldnn.matmul.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        rows = _Recording(grads)
        greedy(rows, align, sqnorm, qn, 5)
        assert rows.precision and set(rows.precision) == {("ieee", "ieee")}
        assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    finally:
        torch.backends.mkldnn.matmul.fp32_precision, torch.backends.cuda.matmul.fp32_precision = before


def test_ties_go_to_the_lowest_row():
    grads, align, sqnorm, qn = _problem(1, 50, 8, seed=6)
    best = greedy(grads, align, sqnorm, qn, 1).indices[0]
    assert best > 0
    for t in (grads, align, sqnorm):
        t[:, 0] = t[:, best]  # an identical copy of the first pick, in front of it
    assert greedy(grads, align, sqnorm, qn, 1).indices == [0]


def test_resident_matrix_is_scored_in_one_product(monkeypatch):
    """A matrix already on the compute device in the compute dtype is never cut into blocks
    (on a GPU each block costs launches and a per-block Python round trip)."""
    grads, align, sqnorm, qn = _problem(2, 3000, 24, seed=8)
    expected = greedy(grads, align, sqnorm, qn, 10).indices

    def no_blocks(*args):
        raise AssertionError("a resident matrix was read block by block")

    monkeypatch.setattr(TensorRows, "blocks", no_blocks)
    assert greedy(grads, align, sqnorm, qn, 10).indices == expected


class _HostReads(TorchDispatchMode):
    """Counts reads of a tensor's value on the host (item(), int(), float(), a 0-d index):
    each one is a wait for the GPU."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def test_exact_greedy_reads_nothing_back_per_pick():
    """The pick loop never waits for the device: host reads do not grow with K."""
    grads, align, sqnorm, qn = _problem(2, 500, 16, seed=12)
    reads = {}
    for k in (5, 25):
        with _HostReads() as mode:
            greedy(grads, align, sqnorm, qn, k, reset_every=4)
        reads[k] = mode.count
    assert reads[5] == reads[25], reads


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_rows_scored_without_widening_match_float32(monkeypatch, half):
    """The accelerator path scores a half-precision matrix from its half-precision rows:
    S is split into three half-precision parts whose products are exact in float32. Run here
    on the CPU with the same arithmetic (CUDA's float32-output product, emulated)."""
    grads, align, sqnorm, qn = _problem(2, 2000, 64, seed=9, dtype=half)
    wide = grads.float()
    g = torch.Generator().manual_seed(2)
    for magnitude in (1e-3, 1.0, 1e6):  # S beyond float16's range is scaled into it
        s = torch.randn(2, 64, generator=g) * magnitude
        exact = torch.einsum("pnd,pd->pn", wide.double(), s.double())
        bound = 64 * 2.0**-24 * wide.double().norm(dim=2) * s.double().norm(dim=1, keepdim=True)
        assert ((half_dots(grads, s) - exact).abs() <= bound).all()
    expected = greedy(wide, align, sqnorm, qn, 25)
    monkeypatch.setattr("weights2data.selection.rows.split_pays", lambda t, dtype: True)
    assert greedy(grads, align, sqnorm, qn, 25).indices == expected.indices


def test_store_that_fits_is_read_once_else_streamed(tmp_path, monkeypatch):
    grads, align, sqnorm, qn = _problem(2, 1200, 32, seed=10)
    rows = _memmap_rows(tmp_path, grads, [(0, 500), (500, 1200)])
    monkeypatch.setattr("weights2data.selection.rows.BLOCK_BYTES", 32 * 2 * 4 * 100)  # 100-row blocks
    calls = {"to": 0, "blocks": 0}

    def counted(name):
        real = getattr(ArrayRows, name)

        def wrapper(self, *args):
            calls[name] += 1
            return real(self, *args)
        return wrapper

    for name in calls:
        monkeypatch.setattr(ArrayRows, name, counted(name))
    expected = greedy(grads, align, sqnorm, qn, 20).indices
    assert greedy(rows, align, sqnorm, qn, 20).indices == expected
    assert calls == {"to": 1, "blocks": 0}  # read into memory once, never streamed
    module = importlib.import_module("weights2data.selection.greedy")  # the name is the function
    monkeypatch.setattr(module, "available_memory", lambda: rows.nbytes())
    calls.update(to=0, blocks=0)
    assert greedy(rows, align, sqnorm, qn, 20).indices == expected
    assert calls == {"to": 0, "blocks": 19}  # over half the free memory: one pass per pick


def test_available_memory_is_plausible():
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < available_memory() <= total
