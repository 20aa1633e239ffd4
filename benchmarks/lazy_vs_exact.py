"""Lazy greedy vs the exact pass on one matrix, in one process, alternating the two.

    python benchmarks/lazy_vs_exact.py --store /tmp/w2d-real/classify/store --k 300
    python benchmarks/lazy_vs_exact.py --synthetic 20000 4096 --k 200

Prints seconds per pick of each (best of --rounds, the machine is shared), their ratio,
whether the picks agree, and how many full passes the lazy greedy still ran.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    from weights2data.selection import greedy
    from weights2data.store import GradientStore

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path)
    ap.add_argument("--synthetic", type=int, nargs=2, metavar=("N", "D"))
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if args.store:
        g = GradientStore(args.store).open().gradients
        grads = g.grads.to(torch.device("cpu")).t.float()
        align, sqnorm, qn = g.align, g.sqnorm, g.target_norm
        what = f"store {args.store}"
    else:
        from greedy import gradients

        grads, align, sqnorm, qn = gradients(*args.synthetic, "cpu", torch.float32)
        what = f"synthetic N={args.synthetic[0]} d={args.synthetic[1]}"
    best, sel = {"exact": float("inf"), "lazy": float("inf")}, {}
    for _ in range(args.rounds):
        for method in best:
            t = time.perf_counter()
            sel[method] = greedy(grads, align, sqnorm, qn, args.k, method=method)
            best[method] = min(best[method], time.perf_counter() - t)
    p, n, d = grads.shape
    print(f"{what}: P={p} N={n} d={d} K={args.k}; exact {best['exact'] / args.k * 1e3:.1f} ms/pick, "
          f"lazy {best['lazy'] / args.k * 1e3:.1f} ms/pick; lazy speed-up "
          f"{best['exact'] / best['lazy']:.2f}x; same picks {sel['lazy'].indices == sel['exact'].indices}; "
          f"lazy full passes {sel['lazy'].stats['full_passes']}/{args.k}, rows refreshed "
          f"{sel['lazy'].stats['rows_refreshed']}")


if __name__ == "__main__":
    main()
