"""`weights2data evaluate`: the command line over evaluation.evaluate."""

from __future__ import annotations

from pathlib import Path

from ..config import UserError
from .train import Schedule


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="retrain the base on each selection of a select run and "
                       "measure accuracy or perplexity on a test set")
    p.add_argument("run", help="a finished `select` output folder (its manifest.json has the config)")
    p.add_argument("--test", required=True, help="test set: jsonl/csv/parquet with text (+ label)")
    p.add_argument("--val", help="validation set (same format): measured beside the test set; "
                   "make every choice (options, K, recipe) on it, never on the test set")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label",
                   help="class names or indices; names map via the fine-tuned config's id2label")
    p.add_argument("--labels", nargs="+", help="class names in class order (overrides id2label)")
    p.add_argument("--strategy", nargs="+", metavar="S", help="which selections (default: all)")
    p.add_argument("--true-data", help="the true fine-tuning data (text + label): adds the OT "
                   "distance of every selection and the oracle (K true documents)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 (mean ± sd); "
                   "random and the oracle are redrawn for every seed")
    d = Schedule()
    p.add_argument("--min-steps", type=int, default=d.min_steps,
                   help=f"steps = max(MIN_STEPS, ⌈EPOCHS·K/BATCH⌉) (default {d.min_steps})")
    p.add_argument("--epochs", type=float, default=d.epochs, help=f"default {d.epochs:g}")
    p.add_argument("--lr", type=float, default=d.lr, help=f"default {d.lr:g}")
    p.add_argument("--train-batch-size", type=int, default=d.batch_size)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup", type=float, default=d.warmup, help="fraction of steps")
    p.add_argument("--device", help="override the run's device (cpu, cuda, auto)")
    p.add_argument("--out", help="results file (default: RUN/results.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args) -> None:
    from .evaluate import evaluate_run, load_run, read_labelled, write_results
    from .protocol import EvalSets, load_setup

    if args.seeds < 1:
        raise UserError("--seeds must be at least 1")
    if args.min_steps < 1 or args.epochs < 0:
        raise UserError("--min-steps must be at least 1 and --epochs at least 0")
    run = load_run(args.run)
    overrides = {"device": args.device} if args.device else {}
    setup = load_setup(run.config(**overrides))
    names = args.labels or run.label_names
    label_column = None if setup.task == "lm" else args.label_column

    def read(path):
        return read_labelled(path, args.text_column, label_column, names)

    sets = EvalSets(*read(args.test), *(read(args.val) if args.val else (None, None)))
    true_texts = true_labels = None
    if args.true_data:
        true_texts, true_labels = read(args.true_data)
    schedule = Schedule(min_steps=args.min_steps, epochs=args.epochs, lr=args.lr,
                        batch_size=args.train_batch_size, weight_decay=args.weight_decay,
                        warmup=args.warmup)
    results = evaluate_run(run, sets, schedule, list(range(args.seeds)), args.strategy,
                           true_texts, true_labels, setup=setup, progress=not args.quiet)
    out = write_results(results, args.out or Path(args.run) / "results.json")
    print(table(results))
    print(f"wrote {out}")


def table(results: dict) -> str:
    """The results as a small text table: test (and validation) mean ± sd over n seeds,
    final training loss, OT distance."""
    unit = "accuracy %" if results["metric"] == "accuracy" else "perplexity"
    val = results.get("val_documents", 0) > 0
    n = len(results["seeds"])
    lines = [f"{unit}, mean ± sd over n = {n} seed(s); recipe: {results['recipe']['steps']} steps "
             f"at lr {results['recipe']['lr']:g}",
             f"{'':<16}{'test':>18}" + (f"{'validation':>18}" if val else "")
             + f"{'train loss':>12}{'OT':>9}"]

    def cell(e: dict | None) -> str:
        return " " * 18 if e is None else f"{e['mean']:>10.1f} ± {e['sd']:5.1f}"

    def row(name: str, e: dict) -> None:
        loss = f"{e['train_loss']['mean']:>12.3f}" if "train_loss" in e else " " * 12
        ot = f"{e['ot']:9.3f}" if e.get("ot") is not None else ""
        lines.append(f"{name:<16}{cell(e)}" + (cell(e.get('val')) if val else "") + loss + ot)

    def point(name: str, d: dict) -> None:
        lines.append(f"{name:<16}{d['test']:>10.1f}{'':8}"
                     + (f"{d['val']:>10.1f}{'':8}" if val else ""))

    point("base", results["base"])
    for name, e in results["strategies"].items():
        row(name, e)
    if "oracle" in results:
        row("oracle", results["oracle"])
    point("expert", results["expert"])
    return "\n".join(lines)
