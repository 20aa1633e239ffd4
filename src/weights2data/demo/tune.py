"""How the demo's tuned choices were made, on the validation split only (never the test
split: every model here is judged on validation, and no test number is computed).

    python -m weights2data.demo.tune expert --task bbc --cache DIR   # expert epochs
    python -m weights2data.demo.tune budget --task bbc --cache DIR   # the recipe's step floor

`expert`: trains the expert for each candidate number of epochs and keeps the one with the
best validation metric (ties to fewer epochs). `budget`: at the smallest K of the grid, trains
θ0 on each row's documents (seed 0) with budgets of S, 2S, 4S steps and picks the smallest S
at which doubling lowers no row's final training loss by more than TOLERANCE nats: the loss has
flattened for every selection, so the recipe, not the data, cannot decide the ranking.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..evaluation import protocol
from ..evaluation.train import Schedule
from ..output import write_json
from .prepare import Stages, build_models, prepare
from .sizes import CLASSIFY_STRATEGIES, LM_STRATEGIES, sizes_for

TOLERANCE = 0.05  # nats: what "the training loss has flattened" allows a doubling to gain
BUDGET_ROWS = {"classify": ["random", "oracle", "select", "topk-balanced"],
               "lm": ["random", "oracle", "select"]}


def _task(task: str, preset: str, progress: bool):
    sizes = sizes_for(task, preset)
    if task == "lm":
        from .lm import hidden_task, smollm_base

        hidden = hidden_task(sizes)
        return sizes, hidden, smollm_base(sizes, hidden, progress), LM_STRATEGIES
    from .classify import hidden_task, minilm_base

    hidden = hidden_task(sizes, task)
    return sizes, hidden, minilm_base(hidden.label_names, sizes.seed), CLASSIFY_STRATEGIES


def expert_epochs(task: str, cache: Path, choices=(1, 2, 3), preset: str = "full",
                  progress: bool = True) -> dict:
    """Validation metric of the expert after each number of epochs; the chosen one."""
    sizes, hidden, make_base, _ = _task(task, preset, progress)
    lower = task == "lm"
    val = {}
    for epochs in choices:
        sizes.expert_epochs = epochs
        base_dir, expert_dir = build_models(hidden, make_base, sizes, cache, Stages(print), progress)
        from ..checkpoints import load_pair
        from ..config import ModelConfig
        from ..framings import make_framing

        pair = load_pair(ModelConfig(str(base_dir), str(expert_dir)))
        framing = make_framing(pair.task, pair.tokenizer, sizes.max_length, ModelConfig("", ""))
        setup = protocol.Setup(pair, framing, None)
        labels = None if lower else [r["label"] for r in hidden.val]
        val[epochs] = protocol.measure(setup, pair.finetuned, [r["text"] for r in hidden.val], labels)
        print(f"expert {epochs} epoch(s): validation {val[epochs]:.2f}", flush=True)
    best = (min if lower else max)(val.values())
    chosen = min(e for e, v in val.items() if v == best)
    return {"task": task, "validation": val, "chosen": chosen, "lower_is_better": lower}


def budget(task: str, cache: Path, budgets=(40, 80, 160), preset: str = "full",
           progress: bool = True, lr: float | None = None) -> dict:
    """Final training loss and validation metric of each row at each step budget (seed 0, the
    smallest K of the preset), and the smallest budget at which every row's loss is flat.
    `lr` overrides the preset's learning rate (compare the chosen budgets' validation)."""
    sizes, hidden, make_base, strategies = _task(task, preset, progress)
    sizes.variants = {}
    sizes.lr = lr or sizes.lr
    p = prepare(hidden, make_base, sizes, cache, strategies, progress)
    k = min(sizes.ks)
    sets = p.sets(with_test=False)  # validation only: no test number is computed here
    rows = BUDGET_ROWS["lm" if task == "lm" else "classify"]
    table: dict[str, dict[int, dict]] = {}
    jobs = [(name, steps) for name in rows for steps in budgets]
    for wait in (False, True):  # several processes on one cache split the jobs
        for name, steps in [j for j in jobs if j[1] not in table.get(j[0], {})]:
            schedule = Schedule(min_steps=steps, epochs=0, lr=sizes.lr, batch_size=sizes.batch_size)
            out = protocol.evaluate(p.setup_for(name), p.draw(name, k), k, schedule, [0], sets,
                                    cache=p.work / "tune-budget", wait=wait)
            if out is None:
                continue
            table.setdefault(name, {})[steps] = {"train_loss": out["train_loss"]["mean"],
                                                 "val": out["mean"]}
            print(f"{name:<16} {steps:>4} steps: train loss {out['train_loss']['mean']:.3f}, "
                  f"validation {out['mean']:.2f}", flush=True)
    flat = [s for s, s2 in zip(budgets, budgets[1:])
            if all(table[n][s]["train_loss"] - table[n][s2]["train_loss"] < TOLERANCE for n in rows)]
    return {"task": task, "k": k, "lr": sizes.lr, "batch_size": sizes.batch_size,
            "tolerance": TOLERANCE, "rows": table,
            "chosen_min_steps": flat[0] if flat else None}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["expert", "budget"])
    ap.add_argument("--task", choices=["bbc", "wiki", "lm"], default="bbc")
    ap.add_argument("--cache", required=True)
    ap.add_argument("--budgets", type=int, nargs="+", default=[40, 80, 160])
    ap.add_argument("--epochs", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--lr", type=float, help="budget: the retraining learning rate to try")
    ap.add_argument("--out", help="write the table here as JSON")
    args = ap.parse_args(argv)
    cache = Path(args.cache)
    if args.what == "expert":
        result = expert_epochs(args.task, cache, tuple(args.epochs))
    else:
        result = budget(args.task, cache, tuple(sorted(args.budgets)), lr=args.lr)
    print(json.dumps(result, indent=1))
    if args.out:
        write_json(Path(args.out), result)


if __name__ == "__main__":
    main()
