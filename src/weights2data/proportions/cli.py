"""`weights2data mixture`: a thin layer over `weights2data.mixture`."""

from __future__ import annotations


def add_parser(sub) -> None:
    from ..cli import add_extraction_options  # cli imports this module first

    p = sub.add_parser("mixture", help="estimate in what proportions which domains went into a "
                       "fine-tune (gradient NNLS and an Adam-aware fit, with SELECT / top-k / loss "
                       "baselines)")
    p.add_argument("--base", required=True, help="base checkpoint: HF folder or hub id")
    p.add_argument("--finetuned", required=True, help="fine-tuned checkpoint, or a PEFT adapter folder")
    p.add_argument("--corpus", help="one corpus whose --domain-column names each row's domain")
    p.add_argument("--domain-column", help="the corpus column naming each document's domain")
    p.add_argument("--domains", nargs="+", metavar="NAME=PATH",
                   help="one corpus per domain instead of --corpus/--domain-column")
    p.add_argument("--out", required=True, help="output folder (mixture.json, report.html)")
    p.add_argument("--k", type=int, help="picks of the SELECT / top-k baselines (default: a "
                   "quarter of the corpus)")
    p.add_argument("--bootstrap", type=int, default=200,
                   help="document resamples for the intervals (default 200; 0: none)")
    p.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--weighting", choices=["documents", "tokens"], default="documents",
                   help="how the fine-tune weighted its loss: per document (default; every "
                   "classifier) or per token (HF's causal-LM default); proportions are in that unit")
    p.add_argument("--other-below", type=float, default=0.0, metavar="F",
                   help="add an 'other' share when the domains explain less than F of ‖q‖² "
                   "(default 0: never; Adam fine-tunes leave most of ‖q‖² unexplained anyway)")
    p.add_argument("--method", choices=["adam", "gradient"], default="gradient",
                   help="headline method (default gradient: NNLS did better on the demo's "
                   "validation seeds); both are computed and written")
    p.add_argument("--adam-batch", default="8", metavar="B",
                   help="the fine-tune's batch size in documents, for the Adam-aware fit "
                   "(default 8), or 'fit' to fit it with the proportions")
    p.add_argument("--adam-sampling", action="store_true",
                   help="count the corpus means' sampling variance in the Adam fit's v")
    p.add_argument("--moments-budget", type=float, default=512, metavar="MIB",
                   help="MiB for the exact per-domain gradient moments (default 512; beyond it a "
                   "uniform sample of output rows is kept)")
    add_extraction_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_cli)


def run_cli(args) -> None:
    from ..cli import extraction_kwargs
    from ..config import UserError
    from .pipeline import make_mixture_config, mixture, parse_domains
    from .report import table

    domains = parse_domains(args.domains) if args.domains else None
    try:
        adam_batch = None if args.adam_batch == "fit" else float(args.adam_batch)
    except ValueError:
        raise UserError(f"--adam-batch is a number or 'fit', not {args.adam_batch!r}") from None
    kwargs = extraction_kwargs(args)
    cfg = make_mixture_config(
        base=args.base, finetuned=args.finetuned, corpus=args.corpus or "",
        domain_column=args.domain_column, domains=domains, k=args.k, bootstrap=args.bootstrap,
        confidence=args.confidence, weighting=args.weighting, other_below=args.other_below,
        method=args.method, adam_batch=adam_batch, adam_sampling=args.adam_sampling,
        moments_budget=int(args.moments_budget * 2**20),
        out=args.out, overwrite=args.overwrite, **kwargs,
    )
    result = mixture(cfg, progress=not args.quiet)
    if result is not None:
        print(table(result))
        print(f"wrote {args.out}/mixture.json and {args.out}/report.html "
              f"({result.info['timings_s']['total']:.0f} s)")
