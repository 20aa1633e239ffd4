"""`weights2data ablate {train,score,validate,demo}`: a thin layer over the ablate API."""

from __future__ import annotations

import time

from ..config import UserError
from ..output import check_destination


def add_parser(sub) -> None:
    """Register `ablate` and its subcommands on the top-level subparsers."""
    p = sub.add_parser("ablate", help="data ablations by training unit models and merging them")
    asub = p.add_subparsers(dest="ablate_command", required=True)

    t = asub.add_parser("train", help="train one model per equal-token base unit (resumable)")
    t.add_argument("--base", required=True, help="base causal LM: HF folder or hub id")
    t.add_argument("--gguf-file", help="GGUF file name inside the base folder")
    t.add_argument("--corpus", help="corpus file/folder, partitioned by --partition-by")
    t.add_argument("--partition-by", metavar="COLUMN", help="corpus column whose values are partitions")
    t.add_argument("--partition-files", nargs="+", metavar="PATH",
                   help="one partition per data file, or per selection of a SELECT run folder")
    t.add_argument("--unit-tokens", type=int, required=True, help="tokens per base unit")
    t.add_argument("--out", required=True, help="pool folder (created, or extended with new units)")
    t.add_argument("--text-column", default="text")
    t.add_argument("--limit", type=int, help="use only the first N corpus rows")
    t.add_argument("--max-length", type=int, default=128)
    t.add_argument("--steps", type=int, default=None, help="optimizer steps per unit model (default: the Recipe's 200)")
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--weight-decay", type=float, default=None)
    t.add_argument("--warmup", type=float, default=None, help="fraction of steps")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--freeze-embeddings", action="store_true",
                   help="leave the (tied) embedding matrices at the base's values")
    t.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    _common(t)
    t.set_defaults(func=_run_train)

    for name, helptext in (("score", "perplexity of every mixture's merged model per eval set"),
                           ("validate", "train sampled mixtures for real; correlate with the proxies")):
        s = asub.add_parser(name, help=helptext)
        s.add_argument("--pool", required=True, help="a pool folder from `ablate train`")
        s.add_argument("--eval", action="append", required=True, metavar="NAME=PATH",
                       help="an eval set (repeatable)")
        s.add_argument("--mixtures", default="size=2,3",
                       help="size=K[,K...] (every combination of units) or a file, one mixture a "
                            "line, units or partitions joined by '+' (default size=2,3)")
        s.add_argument("--out", required=True, help="output folder")
        s.add_argument("--text-column", default="text")
        s.add_argument("--eval-limit", type=int, help="use only the first N documents of each eval set")
        s.add_argument("--batch-size", type=int, default=8, help="evaluation batch size")
        s.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
        _common(s)
    score, validate = asub.choices["score"], asub.choices["validate"]
    score.add_argument("--top", type=int, default=10, help="mixtures per eval set in ranking.md")
    score.set_defaults(func=_run_score)
    validate.add_argument("--sample", type=int, default=8, help="mixtures to train for real")
    validate.add_argument("--seed", type=int, default=0, help="seed of the sample")
    validate.set_defaults(func=_run_validate)

    d = asub.add_parser("demo", help="offline demo on a truncated SmolLM2-135M (CPU, ~20 min)")
    d.add_argument("--out", default="ablate-demo", help="work folder (resumable)")
    d.add_argument("--layers", type=int, default=4, help="keep the first N of SmolLM2's 30 layers")
    d.add_argument("--steps", type=int, default=10, help="optimizer steps per unit model (default: the Recipe's 200)")
    d.add_argument("--sample", type=int, default=6, help="mixtures to validate")
    d.add_argument("--heal-steps", type=int, default=30,
                   help="steps of continued training that repair the truncated base")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_run_demo)


def _common(p) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_train(args) -> None:
    from .pool import PoolSpec, train_pool
    from .units import by_column, from_files

    if bool(args.corpus) == bool(args.partition_files):
        raise UserError("give either --corpus with --partition-by, or --partition-files")
    if args.corpus and not args.partition_by:
        raise UserError("--corpus needs --partition-by COLUMN")
    from ..evaluation.train import Recipe

    given = {k: getattr(args, k) for k in ("steps", "lr", "batch_size", "weight_decay", "warmup")}
    recipe = Recipe(seed=args.seed, **{k: v for k, v in given.items() if v is not None})
    spec = PoolSpec(base=args.base, gguf_file=args.gguf_file, dtype=args.dtype,
                    max_length=args.max_length, unit_tokens=args.unit_tokens, recipe=recipe,
                    freeze_embeddings=args.freeze_embeddings)
    parts = (by_column(args.corpus, args.partition_by, args.text_column, args.limit) if args.corpus
             else from_files(args.partition_files, args.text_column))
    s = train_pool(args.out, spec, parts, args.device, not args.quiet)
    print(train_summary(s))


def train_summary(s) -> str:
    lines = [f"pool {s.pool}: {len(s.units)} units of >= {s.units[0].tokens if s.units else 0} tokens; "
             f"trained {len(s.trained)} now ({s.steps} steps, {s.seconds:.1f} s), "
             f"{len(s.skipped)} already there"]
    for d in s.dropped:
        lines.append(f"  dropped the remainder of {d.partition!r}: {d.documents} documents, "
                     f"{d.tokens} tokens (less than a unit)")
    return "\n".join(lines)


def _load(args):
    from .pool import open_pool
    from .score import load_eval_sets, parse_mixtures

    check_destination(args.out, args.overwrite)
    pool = open_pool(args.pool)
    mixtures = parse_mixtures(args.mixtures, pool)
    model, tok = pool.load_base(args.device)
    sets = load_eval_sets(args.eval, pool.framing(tok), args.text_column, args.eval_limit)
    return pool, mixtures, model, tok, sets


def _run_score(args) -> None:
    from .score import ranking, score_mixtures, write_scores

    t0 = time.perf_counter()
    pool, mixtures, model, tok, sets = _load(args)
    rows = score_mixtures(pool, mixtures, sets, args.device, args.batch_size, not args.quiet, model, tok)
    write_scores(args.out, pool, rows, sets, time.perf_counter() - t0, args.overwrite, args.top)
    print(f"wrote {args.out}: {len(mixtures)} mixtures x {len(sets)} eval sets")
    for name, ranked in ranking(rows, sets).items():
        best = ", ".join(f"{r['mixture']} ({r['ppl']:.2f})" for r in ranked[:3])
        print(f"  best for {name}: {best}")


def _run_validate(args) -> None:
    from .validate import correlation_table, sample_mixtures, validate, write_validation

    pool, mixtures, model, tok, sets = _load(args)
    picked = sample_mixtures(mixtures, args.sample, args.seed)
    v = validate(pool, sets, picked, args.device, args.batch_size, not args.quiet,
                 model=model, tokenizer=tok)
    write_validation(args.out, pool, v, args.overwrite)
    print(f"wrote {args.out}: {len(picked)} mixtures trained for real ({v.train_steps} steps)")
    print(correlation_table(v))


def _run_demo(args) -> None:
    from .demo import run_demo

    run_demo(args.out, layers=args.layers, steps=args.steps, sample=args.sample,
             heal_steps=args.heal_steps, progress=not args.quiet)
