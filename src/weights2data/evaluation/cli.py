"""`weights2data evaluate`: the command line over evaluation.evaluate."""

from __future__ import annotations

from pathlib import Path

from .train import Recipe


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="retrain the base on each selection of a select run and "
                       "measure accuracy or perplexity on a test set")
    p.add_argument("run", help="a finished `select` output folder (its manifest.json has the config)")
    p.add_argument("--test", required=True, help="test set: jsonl/csv/parquet with text (+ label)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label",
                   help="class names or indices; names map via the fine-tuned config's id2label")
    p.add_argument("--labels", nargs="+", help="class names in class order (overrides id2label)")
    p.add_argument("--strategy", nargs="+", metavar="S", help="which selections (default: all)")
    p.add_argument("--true-data", help="the true fine-tuning data (text + label): adds the OT "
                   "distance of every selection and the oracle (K true documents)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 (mean ± sd)")
    defaults = Recipe()
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--train-batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--warmup", type=float, default=defaults.warmup, help="fraction of steps")
    p.add_argument("--device", help="override the run's device (cpu, cuda, auto)")
    p.add_argument("--out", help="results file (default: RUN/results.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args) -> None:
    from .evaluate import evaluate_run, load_run, read_labelled, write_results
    from .retrain import load_setup

    run = load_run(args.run)
    overrides = {"device": args.device} if args.device else {}
    setup = load_setup(run.config(**overrides))
    names = args.labels or run.label_names
    label_column = None if setup.task == "lm" else args.label_column
    test_texts, test_labels = read_labelled(args.test, args.text_column, label_column, names)
    true_texts = true_labels = None
    if args.true_data:
        true_texts, true_labels = read_labelled(args.true_data, args.text_column, label_column, names)
    recipe = Recipe(steps=args.steps, lr=args.lr, batch_size=args.train_batch_size,
                    weight_decay=args.weight_decay, warmup=args.warmup)
    results = evaluate_run(run, test_texts, test_labels, recipe, list(range(args.seeds)),
                           args.strategy, true_texts, true_labels, setup=setup,
                           progress=not args.quiet)
    out = write_results(results, args.out or Path(args.run) / "results.json")
    print(table(results))
    print(f"wrote {out}")


def table(results: dict) -> str:
    """The results as a small text table."""
    pct = results["metric"] == "accuracy"
    unit = "accuracy %" if pct else "perplexity"
    lines = [f"{'':<16}{unit:>18}{'OT':>9}"]

    def row(name: str, mean: float, sd: float | None = None, ot: float | None = None) -> None:
        spread = f" ± {sd:5.1f}" if sd is not None else " " * 8
        ot_s = f"{ot:9.3f}" if ot is not None else ""
        lines.append(f"{name:<16}{mean:>10.1f}{spread}{ot_s}")

    row("base", results["base"])
    for name, e in results["strategies"].items():
        row(name, e["mean"], e["sd"], e.get("ot"))
    if "oracle" in results:
        row("oracle", results["oracle"]["mean"], results["oracle"]["sd"])
    row("expert", results["expert"])
    return "\n".join(lines)
