"""Command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import sys

from .ablate.cli import add_parser as add_ablate
from .config import STRATEGIES, UserError
from .demo import cli as demo_cli
from .evaluation import cli as evaluation_cli
from .proportions.cli import add_parser as add_mixture


def add_extraction_options(p) -> None:
    """Options on how θ0 and θf are read and how gradients are taken: shared by `select` and
    `mixture` (the fields of ModelConfig, CorpusConfig and GradientConfig but the paths)."""
    p.add_argument("--task", choices=["classify-head", "classify-tokens", "lm"],
                   help="task framing (default: detected from the checkpoint)")
    p.add_argument("--labels", nargs="+", help="classify-tokens: the label words, in class order")
    p.add_argument("--prompt-template", default="{text}",
                   help="classify-tokens: text before the label word (default: {text})")
    p.add_argument("--text-column", default="text")
    p.add_argument("--gguf-file", help="GGUF file name inside the checkpoint folder")
    p.add_argument("--head-init", choices=["auto", "base", "zeros"], default="auto",
                   help="classify-head: θ0's head from the base, or zeros (auto: base if it has one)")
    p.add_argument("--checkpoints", type=int, default=3,
                   help="P synthetic checkpoints θ0 + j/P·Δ, j < P (default 3; 1 = θ0 only)")
    p.add_argument("--grad-at", choices=["interpolated", "finetuned"], default="interpolated",
                   help="take gradients at the interpolated checkpoints, or at θf only")
    p.add_argument("--layers", nargs="+", default=["auto"], metavar="L",
                   help="which layers' gradients: auto (default: last if it changed, else "
                        "changed), last, changed, adapter, or module names/globs such as "
                        "'model.layers.*.mlp.down_proj'")
    p.add_argument("--projection", choices=["kronecker", "dense-rademacher", "dense-gaussian"],
                   default="kronecker", help="used when the layers exceed --exact-max entries")
    p.add_argument("--projection-dim", type=int, default=4096)
    p.add_argument("--exact-max", type=int, default=65_536,
                   help="keep gradients exact up to this many entries, all layers together "
                        "(default 65536)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-tokens", type=int,
                   help="padded tokens per batch, longest documents first (default: 4096 on a "
                        "CPU, sized to free memory on a GPU)")
    p.add_argument("--batch-size", type=int, help="also cap documents per batch (default: no cap)")
    p.add_argument("--limit", type=int, help="use only the first N corpus rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="compute dtype (auto: bfloat16 on a GPU that supports it, else float32)")
    p.add_argument("--store", metavar="DIR",
                   help="keep labels, losses and gradients in a resumable on-disk store in DIR "
                        "(reused when the configuration matches; required under torchrun). "
                        "Without it everything stays in memory")
    p.add_argument("--store-dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="how the store keeps gradient vectors (default float32)")
    p.add_argument("--shard-size", type=int, default=4096, help="documents per store shard")


def extraction_kwargs(args) -> dict:
    """The make_config keywords of add_extraction_options' options."""
    return dict(
        task=args.task, labels=args.labels, prompt_template=args.prompt_template,
        text_column=args.text_column, gguf_file=args.gguf_file, head_init=args.head_init,
        checkpoints=args.checkpoints, layers=args.layers, batch_tokens=args.batch_tokens,
        grad_at=args.grad_at, projection=args.projection,
        projection_dim=args.projection_dim, exact_max=args.exact_max, max_length=args.max_length,
        batch_size=args.batch_size, limit=args.limit, seed=args.seed, device=args.device,
        dtype=args.dtype, store=args.store, store_dtype=args.store_dtype,
        shard_size=args.shard_size,
    )


def _add_select(sub) -> None:
    p = sub.add_parser("select", help="recover fine-tuning data: pick K corpus documents")
    p.add_argument("--base", required=True, help="base checkpoint: HF folder or hub id")
    p.add_argument("--finetuned", required=True, help="fine-tuned checkpoint, or a PEFT adapter folder")
    p.add_argument("--corpus", required=True, help="jsonl/csv/parquet file or folder, or a saved dataset")
    p.add_argument("--k", type=int, required=True, help="documents to select")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--strategy", nargs="+", default=["select"], choices=STRATEGIES, metavar="S",
                   help=f"one or more of: {', '.join(STRATEGIES)} (default: select)")
    add_extraction_options(p)
    p.add_argument("--reset-every", type=int, help="select-batched: picks per batch (default K/10)")
    p.add_argument("--greedy", choices=["exact", "stochastic"], default="exact",
                   help="select: exact (one pass per pick), stochastic (scores (N/K)·ln(1/ε) "
                        "random rows per pick)")
    p.add_argument("--epsilon", type=float, default=0.01, help="--greedy stochastic: ε (default 0.01)")
    p.add_argument("--confidence-quantile", type=float, default=0.0, metavar="Q",
                   help="classification: within each autolabel, drop the share Q of documents "
                        "whose label θf is least sure of, so no class is removed (default 0: keep "
                        "all; an option, not a recommendation: see README Results)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_select)


def _run_select(args) -> None:
    from .pipeline import make_config, select

    cfg = make_config(
        base=args.base, finetuned=args.finetuned, corpus=args.corpus, k=args.k, out=args.out,
        strategies=args.strategy, reset_every=args.reset_every, overwrite=args.overwrite,
        greedy=args.greedy, epsilon=args.epsilon, confidence_quantile=args.confidence_quantile,
        **extraction_kwargs(args),
    )
    if not 0 < args.epsilon < 1:
        raise UserError("--epsilon must be between 0 and 1")
    result = select(cfg, progress=not args.quiet)
    if result is not None:  # ranks other than 0 of a torchrun job only build the store
        print(summary(result))


def summary(result) -> str:
    lines = [f"wrote {result.config.out}  ({result.info['documents']} documents, task {result.task})"]
    if "eligible_documents" in result.info:
        lines.append(f"  {result.info['eligible_documents']} documents were eligible (the "
                     f"{1 - result.config.selection.confidence_quantile:.0%} of each autolabel "
                     "θf is surest of)")
    for stage, secs in result.info["timings_s"].items():
        lines.append(f"  {stage:<24}{secs:>9.1f} s")
    for name, sel in result.selections.items():
        peak = f"  cos(S,q) peaks at {sel.peak[1]:.3f} after {sel.peak[0]} picks" if sel.peak else ""
        lines.append(f"  selected-{name}.jsonl: {len(sel.indices)} documents{peak}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weights2data",
        description="Recover approximate fine-tuning data from a base and a fine-tuned checkpoint.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_select(sub)
    evaluation_cli.add_parser(sub)
    demo_cli.add_parser(sub)
    add_ablate(sub)
    add_mixture(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as err:
        print(f"weights2data: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("weights2data: interrupted; nothing was written to the output folder", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
