"""`weights2data demo`: the whole story offline, on models and data the install brings."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..config import UserError

DEFAULT_CACHE = Path.home() / ".cache" / "weights2data" / "demo"


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="offline demo: hide a task's data in a fine-tune, recover it "
                       "from a public corpus, retrain and compare strategies")
    p.add_argument("--task", choices=["bbc", "wiki", "lm", "classify"], default="bbc",
                   help="bbc (or classify): all-MiniLM-L6-v2 on 5 BBC News topics, recovered from "
                   "Wikipedia, news and tweets (default); wiki: all-MiniLM-L6-v2 on 11 imbalanced "
                   "Wikipedia topics, recovered from BBC, news and tweets; lm: SmolLM2-135M (first "
                   "layers, healed on seed text) on BBC passages, judged by perplexity")
    p.add_argument("--ablate", action="store_true",
                   help="the data-ablation demo instead (`weights2data ablate demo`): unit models "
                   "on a truncated SmolLM2-135M, mixtures scored by merging, a sample trained")
    p.add_argument("--mixture", action="store_true",
                   help="the mixture demo instead (`weights2data mixture`): fine-tune on known "
                   "mixtures of the sources, estimate them, report the error per method")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="a few minutes: a quarter of the corpus, K = 100, 3 seeds")
    size.add_argument("--full", action="store_true",
                      help="the published grid: K = 100, 200, 500, 3 seeds, every SELECT variant")
    p.add_argument("--variants", action="store_true",
                   help="also run the SELECT variants of --full (the other P of 1, 3, 5; gradients "
                   "at θf; classification: zero head init, the surest half of each autolabel) at "
                   "this preset's sizes")
    p.add_argument("--lora", action="store_true",
                   help="bbc/wiki: the expert is a LoRA adapter (r = 8, alpha 16, on the attention "
                   "query and value modules, head frozen) and every row is retrained with the same "
                   "recipe (a fresh adapter on θ0 at LoRA's own lr); select takes the adapter's layers")
    p.add_argument("--recipe-check", action="store_true",
                   help="also rerun the smallest K at half and double the step budget and report "
                   "whether the ranking of strategies holds (Kendall τ)")
    p.add_argument("--seeds", type=int, help="override the number of training seeds")
    p.add_argument("--k", type=int, nargs="+", help="override the K values")
    p.add_argument("--leak", type=float, default=0.0,
                   help="mix this fraction of the true training data into the seed corpus and "
                   "report each selection's precision/recall on it")
    p.add_argument("--cache", default=str(DEFAULT_CACHE),
                   help=f"cache for the models, selections and scores (default {DEFAULT_CACHE})")
    p.add_argument("--out", help="where results.json and report.html go (default: the cache run folder)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_demo_cli)


def run_demo_cli(args) -> None:
    import torch

    from ..evaluation.evaluate import write_results
    from . import report
    from .run import run_demo
    from .sizes import CLASSIFY_STRATEGIES, LM_STRATEGIES, select_variants, sizes_for

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ablate:
        from ..ablate.demo import run_demo as run_ablate_demo

        run_ablate_demo(args.out or str(Path(args.cache) / "ablate"), progress=not args.quiet)
        return
    task = "bbc" if args.task == "classify" else args.task
    preset = "quick" if args.quick else "full" if args.full else "default"
    if args.mixture:
        from ..proportions.demo import run_demo as run_mixture_demo

        run_mixture_demo(args.out or str(Path(args.cache) / "mixture"), preset, args.seeds,
                         cache=Path(args.cache) / "mixture", progress=not args.quiet)
        return
    if args.lora and task == "lm":
        raise UserError("--lora is for the classification tasks (--task bbc or wiki)")
    sizes = sizes_for(task, preset, lora=args.lora)
    if args.variants:
        sizes.variants = select_variants(sizes.checkpoints, classify=task != "lm", lora=args.lora)
    if args.seeds is not None:
        if args.seeds < 1:
            raise UserError("--seeds must be at least 1")
        sizes.seeds = args.seeds
    if args.k:
        if min(args.k) < 1:
            raise UserError("--k values must be at least 1")
        sizes.ks = sorted(set(args.k))
    if not 0 <= args.leak < 1:
        raise UserError("--leak is a fraction in [0, 1)")
    sizes.leak = args.leak
    sizes.recipe_check = args.recipe_check
    start, cpu = time.perf_counter(), time.process_time()
    if task == "lm":
        from .lm import hidden_task, smollm_base

        hidden = hidden_task(sizes)
        make_base, strategies = smollm_base(sizes, hidden, not args.quiet), LM_STRATEGIES
    else:
        from .classify import hidden_task, minilm_base

        hidden = hidden_task(sizes, task)
        make_base, strategies = minilm_base(hidden.label_names, sizes.seed), CLASSIFY_STRATEGIES
    if max(sizes.ks) > len(hidden.seed):
        raise UserError(f"--k {max(sizes.ks)} exceeds the seed corpus ({len(hidden.seed)} documents)")
    results = run_demo(hidden, make_base, sizes, Path(args.cache), strategies,
                       progress=not args.quiet)
    results["preset"] = preset
    results["wall_s"] = round(time.perf_counter() - start, 1)
    results["cpu_s_total"] = round(time.process_time() - cpu, 1)  # what it costs alone
    out = Path(args.out or results["cache"])
    out.mkdir(parents=True, exist_ok=True)
    write_results(results, out / "results.json")
    report.write_html(results, out / "report.html")
    print(report.table(results))
    print(f"({preset} preset, {results['wall_s']:.0f} s wall, {results['cpu_s_total']:.0f} s CPU, "
          f"{os.cpu_count()} CPUs)  "
          f"wrote {out / 'results.json'} and {out / 'report.html'}")
