"""Greedy milliseconds per pick on a matrix resident on one device, beside its bandwidth floor.

    python benchmarks/greedy.py --device cuda --dtype bfloat16          # N = 10^6, d = 4096
    python benchmarks/greedy.py --device cpu --n 100000 --d 1024

One pass over G per pick reads every stored byte once, so the floor is the bytes of G over
the bandwidth the device reaches reading them (timed here, a read-only reduction of G).
`bench_greedy` is what benchmarks/gpu.py imports.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from weights2data.selection import greedy  # noqa: E402
from weights2data.selection.rows import TensorRows  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn, device: torch.device, rounds: int = 3) -> float:
    """Fastest of `rounds` calls, in seconds."""
    best = float("inf")
    for _ in range(rounds):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def gradients(n: int, d: int, device, dtype: torch.dtype, p: int = 1, seed: int = 0):
    """Rows like projected gradients (a few shared directions, noise, some alignment with a
    target q), made on the device in chunks; the exact scalars are those of the stored rows."""
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(d, generator=g, device=device)
    shared = torch.randn(16, d, generator=g, device=device) * 0.5
    grads = torch.empty(p, n, d, dtype=dtype, device=device)
    align = torch.empty(p, n, device=device)
    sqnorm = torch.empty(p, n, device=device)
    step = max(1, (1 << 28) // (4 * d))
    for j in range(p):
        for start in range(0, n, step):
            m = min(step, n - start)
            rows = (torch.randn(m, 16, generator=g, device=device) @ shared
                    + torch.randn(m, d, generator=g, device=device)
                    + torch.randn(m, 1, generator=g, device=device) * 0.05 * q)
            rows *= torch.rand(m, 1, generator=g, device=device) + 0.5
            grads[j, start : start + m] = rows.to(dtype)
            stored = grads[j, start : start + m].float()
            align[j, start : start + m] = stored @ q
            sqnorm[j, start : start + m] = stored.square().sum(1)
    return grads, align, sqnorm, float(q.norm())


def bench_greedy(n: int = 1_000_000, d: int = 4096, k: int = 50, device="cuda",
                 dtype: torch.dtype = torch.float32, p: int = 1) -> dict:
    """The exact greedy on a (p, n, d) matrix of `dtype` held on `device`: ms per pick (the
    marginal cost of a pick, from runs of k/5 and k picks) beside the bandwidth floor."""
    device = torch.device(device)
    grads, align, sqnorm, qn = gradients(n, d, device, dtype, p)
    nbytes = grads.nbytes
    read = best_of(lambda: grads.sum(dtype=torch.float32), device)  # one read of every byte
    s = torch.randn(p, d, device=device)
    scoring = best_of(lambda: TensorRows(grads).dots(s, torch.float32, device), device)
    short = max(2, k // 5)
    greedy(grads, align, sqnorm, qn, 2, device=device)  # warm-up (allocator, kernels)
    t_short = best_of(lambda: greedy(grads, align, sqnorm, qn, short, device=device), device, 1)
    t_long = best_of(lambda: greedy(grads, align, sqnorm, qn, k, device=device), device, 1)
    per_pick = (t_long - t_short) / (k - short)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": name, "dtype": str(dtype).removeprefix("torch."), "n": n, "d": d, "p": p,
            "k": k, "gib": nbytes / 2**30, "ms_per_pick": per_pick * 1e3,
            "scoring_pass_ms": scoring * 1e3, "floor_ms": read * 1e3,
            "bandwidth_gb_s": nbytes / read / 1e9}


def describe(r: dict) -> str:
    return (f"greedy {r['dtype']} on {r['device']} (N={r['n']}, d={r['d']}, P={r['p']}, "
            f"{r['gib']:.1f} GiB): {r['ms_per_pick']:.2f} ms per pick; scoring pass "
            f"{r['scoring_pass_ms']:.2f} ms; bandwidth floor {r['floor_ms']:.2f} ms "
            f"({r['bandwidth_gb_s']:.0f} GB/s read); {r['ms_per_pick'] / r['floor_ms']:.2f}x the floor")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--p", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    args = ap.parse_args()
    for name in args.dtype:
        print(describe(bench_greedy(args.n, args.d, args.k, args.device, getattr(torch, name),
                                    args.p)), flush=True)


if __name__ == "__main__":
    main()
