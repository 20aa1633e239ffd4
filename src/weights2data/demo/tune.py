"""How the demo's tuned choices were made, on the validation split only (never the test
split: every model here is judged on validation, and no test number is computed).

    python -m weights2data.demo.tune expert --task bbc --cache DIR   # expert epochs
    python -m weights2data.demo.tune budget --task bbc --cache DIR   # the recipe's step floor
    python -m weights2data.demo.tune lr --lora --preset quick --cache DIR  # the retraining lr

`expert`: trains the expert for each candidate number of epochs and keeps the one with the
best validation metric (ties to fewer epochs). `lr`: at the smallest K and the preset's budget,
trains θ0 on each row's documents (seed 0) with each candidate learning rate and keeps the one
with the best validation metric averaged over the rows (ties to the smaller lr). `--lora` tunes
the LoRA demo (`demo --lora`): LoRA expert, LoRA retraining. `budget`: at the smallest K of the grid, trains
θ0 on each row's documents (seed 0) with budgets of S, 2S, 4S steps and picks the smallest S
at which doubling lowers no row's final training loss by more than TOLERANCE nats: the loss has
flattened for every selection, so the recipe, not the data, cannot decide the ranking; for `lm`,
the budget with the best validation perplexity averaged over the rows (`best_validation_budget`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from ..evaluation import protocol
from ..evaluation.train import Schedule
from ..output import write_json
from .prepare import Stages, build_models, prepare
from .sizes import CLASSIFY_STRATEGIES, LM_STRATEGIES, sizes_for

TOLERANCE = 0.05  # nats: what "the training loss has flattened" allows a doubling to gain
BUDGET_ROWS = {"classify": ["random", "oracle", "select", "topk-balanced"],
               "lm": ["random", "oracle", "select"]}


def _task(task: str, preset: str, progress: bool, lora: bool = False):
    sizes = sizes_for(task, preset, lora=lora)
    if task == "lm":
        from .lm import hidden_task, smollm_base

        hidden = hidden_task(sizes)
        return sizes, hidden, smollm_base(sizes, hidden, progress), LM_STRATEGIES
    from .classify import hidden_task, minilm_base

    hidden = hidden_task(sizes, task)
    return sizes, hidden, minilm_base(hidden.label_names, sizes.seed), CLASSIFY_STRATEGIES


def expert_epochs(task: str, cache: Path, choices=(1, 2, 3), preset: str = "full",
                  progress: bool = True, lora: bool = False) -> dict:
    """Validation metric of the expert after each number of epochs; the chosen one."""
    sizes, hidden, make_base, _ = _task(task, preset, progress, lora)
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
    return {"task": task, "lora": lora, "expert_lr": sizes.expert_lr, "validation": val,
            "chosen": chosen, "lower_is_better": lower}


def _seed0_grid(p, rows: list[str], settings, folder: str, schedule_of, label) -> dict:
    """Each (row, setting): θ0 trained on the row's documents at the smallest K, seed 0, with
    `schedule_of(setting)`; its validation metric and final training loss. Validation only:
    no test number is computed. Several processes on one cache split the jobs."""
    k = min(p.sizes.ks)
    sets = p.sets(with_test=False)
    found: dict[tuple, dict] = {}
    jobs = [(name, setting) for setting in settings for name in rows]
    for wait in (False, True):
        for name, setting in [j for j in jobs if j not in found]:
            out = protocol.evaluate(p.setup_for(name), p.draw(name, k), k, schedule_of(setting),
                                    [0], sets, cache=p.work / folder, wait=wait)
            if out is None:
                continue
            found[name, setting] = {"train_loss": out["train_loss"]["mean"], "val": out["mean"]}
            print(f"{name:<16} {label(setting)}: train loss {out['train_loss']['mean']:.3f}, "
                  f"validation {out['mean']:.2f}", flush=True)
    return found


def budget(task: str, cache: Path, budgets=(40, 80, 160), preset: str = "full",
           progress: bool = True, lr: float | None = None, lora: bool = False) -> dict:
    """Final training loss and validation metric of each row at each step budget (seed 0, the
    smallest K of the preset), and the smallest budget at which every row's loss is flat.
    `lr` overrides the preset's learning rate (compare the chosen budgets' validation)."""
    sizes, hidden, make_base, strategies = _task(task, preset, progress, lora)
    sizes.variants = {}
    sizes.lr = lr or sizes.lr
    p = prepare(hidden, make_base, sizes, cache, strategies, progress)
    rows = BUDGET_ROWS["lm" if task == "lm" else "classify"]
    grid = _seed0_grid(p, rows, budgets, "tune-budget", lambda steps: Schedule(
        min_steps=steps, epochs=0, lr=sizes.lr, batch_size=sizes.batch_size, lora=sizes.lora),
        lambda steps: f"{steps:>4} steps")
    table = {name: {steps: grid[name, steps] for steps in budgets} for name in rows}
    lm = task == "lm"
    return {"task": task, "k": min(sizes.ks), "lr": sizes.lr, "batch_size": sizes.batch_size,
            "tolerance": TOLERANCE, "rows": table,
            "rule": "best mean validation" if lm else "flat training loss",
            "chosen_min_steps": (best_validation_budget if lm else flat_budget)(table, budgets)}


def flat_budget(table: dict[str, dict[int, dict]], budgets: tuple[int, ...]) -> int | None:
    """Classification: the smallest budget at which doubling lowers no row's final training
    loss by more than TOLERANCE nats (None if none in the grid)."""
    flat = [s for s, s2 in zip(budgets, budgets[1:])
            if all(t[s]["train_loss"] - t[s2]["train_loss"] < TOLERANCE for t in table.values())]
    return flat[0] if flat else None


def best_validation_budget(table: dict[str, dict[int, dict]], budgets: tuple[int, ...]) -> int:
    """Language modelling: the budget with the lowest validation perplexity averaged over the
    rows (ties to fewer steps). An LM's training loss only flattens once it has memorised its
    K documents, long after its held-out perplexity has turned up, so the flat-loss rule would
    pick a budget that makes every row worse than θ0."""
    return _best_mean({s: sum(t[s]["val"] for t in table.values()) / len(table) for s in budgets},
                      lower=True)


def _best_mean(mean: dict, lower: bool):
    """The setting with the best mean validation metric; ties to the smaller setting."""
    sign = 1 if lower else -1
    return min(mean, key=lambda s: (sign * mean[s], s))


def learning_rate(task: str, cache: Path, lrs=(3e-4, 1e-3, 3e-3), preset: str = "quick",
                  progress: bool = True, lora: bool = False) -> dict:
    """Validation metric and final training loss of each row at each learning rate (seed 0,
    the smallest K, the preset's step budget); the lr with the best mean validation over the
    rows. Every row counts alike, so the choice favours no strategy."""
    sizes, hidden, make_base, strategies = _task(task, preset, progress, lora)
    sizes.variants = {}
    p = prepare(hidden, make_base, sizes, cache, strategies, progress)
    k = min(sizes.ks)
    rows = BUDGET_ROWS["lm" if task == "lm" else "classify"]
    grid = _seed0_grid(p, rows, lrs, "tune-lr", lambda lr: replace(sizes.schedule(), lr=lr),
                       lambda lr: f"lr {lr:g}")
    table = {lr: {name: grid[name, lr] for name in rows} for lr in lrs}
    mean = {lr: sum(r["val"] for r in table[lr].values()) / len(rows) for lr in lrs}
    return {"task": task, "lora": lora, "k": k, "steps": sizes.schedule().steps(k),
            "batch_size": sizes.batch_size, "rows": {str(lr): table[lr] for lr in lrs},
            "mean_validation": {str(lr): v for lr, v in mean.items()},
            "chosen_lr": _best_mean(mean, lower=task == "lm")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["expert", "budget", "lr"])
    ap.add_argument("--task", choices=["bbc", "wiki", "lm"], default="bbc")
    ap.add_argument("--cache", required=True)
    ap.add_argument("--budgets", type=int, nargs="+", default=[40, 80, 160])
    ap.add_argument("--epochs", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--lr", type=float, help="budget: the retraining learning rate to try")
    ap.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3],
                    help="lr: the candidate retraining learning rates")
    ap.add_argument("--lora", action="store_true", help="tune the LoRA demo (demo --lora)")
    ap.add_argument("--preset", choices=["quick", "default", "full"],
                    help="the demo preset to tune on (default: full; lr: quick)")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--out", help="write the table here as JSON")
    args = ap.parse_args(argv)
    cache = Path(args.cache)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.what == "expert":
        result = expert_epochs(args.task, cache, tuple(args.epochs), args.preset or "full",
                               lora=args.lora)
    elif args.what == "budget":
        result = budget(args.task, cache, tuple(sorted(args.budgets)), args.preset or "full",
                        lr=args.lr, lora=args.lora)
    else:
        result = learning_rate(args.task, cache, tuple(args.lrs), args.preset or "quick",
                               lora=args.lora)
    print(json.dumps(result, indent=1))
    if args.out:
        write_json(Path(args.out), result)


if __name__ == "__main__":
    main()
