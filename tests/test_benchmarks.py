"""The GPU benchmark script runs (tiny shapes on the CPU), so it does not rot between the
sessions that have a GPU."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_gpu_benchmark_smoke():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| SmolLM2")]
    assert len(rows) == 6  # three framings × two dtypes
    assert "8B shape, bf16, P = 3" in out.stdout
