"""benchmarks/greedy.py, which benchmarks/gpu.py imports, runs on a CPU at a small size."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "greedy.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_greedy", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gradients_carry_the_scalars_of_the_stored_rows(bench):
    grads, align, sqnorm, qn = bench.gradients(500, 16, "cpu", torch.bfloat16, p=2)
    assert grads.shape == (2, 500, 16) and grads.dtype == torch.bfloat16
    torch.testing.assert_close(sqnorm, grads.float().square().sum(2))
    assert qn > 0 and align.abs().max() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bench_greedy_on_cpu(bench, dtype):
    r = bench.bench_greedy(n=3000, d=32, k=10, device="cpu", dtype=dtype)
    assert (r["device"], r["n"], r["d"], r["k"]) == ("cpu", 3000, 32, 10)
    assert r["dtype"] == str(dtype).removeprefix("torch.")
    assert r["gib"] == pytest.approx(3000 * 32 * dtype.itemsize / 2**30)
    for key in ("ms_per_pick", "scoring_pass_ms", "floor_ms", "bandwidth_gb_s"):
        assert math.isfinite(r[key]), key
    assert r["floor_ms"] > 0 and r["scoring_pass_ms"] > 0
    assert "ms per pick" in bench.describe(r)
