"""`demo --recipe-check`: does the ranking of strategies survive half and double the step
budget? If a conclusion flips with the recipe, the recipe, not the data, decided it."""

from __future__ import annotations

import itertools
import math


def compare(by_budget: dict[float, dict[str, dict]], k: int, lower_is_better: bool) -> dict:
    """`by_budget`: step-budget factor (1.0 = the recipe) -> row name -> protocol result.

    A *conclusion* is an ordering of two rows at the recipe's budget whose means differ by
    more than the larger of their sds; it *flips* when another budget orders the pair the other
    way by more than the larger sd there. Kendall τ compares each budget's ranking of the rows
    (by test mean) with the recipe's."""
    from scipy.stats import kendalltau  # only where the check runs

    names = list(by_budget[1.0])
    sign = -1 if lower_is_better else 1

    def ranking(rows: dict[str, dict]) -> list[str]:
        return sorted(names, key=lambda n: -sign * rows[n]["mean"])

    budgets = {}
    for f, rows in sorted(by_budget.items()):
        budgets[f"{f:g}"] = {
            "steps": rows[names[0]]["recipe"]["steps"],
            "mean": {n: rows[n]["mean"] for n in names},
            "sd": {n: rows[n]["sd"] for n in names},
            "n": rows[names[0]]["n"],
            "train_loss": {n: rows[n]["train_loss"]["mean"] for n in names},
            "ranking": ranking(rows),
        }

    def claim(rows: dict[str, dict], a: str, b: str) -> int:
        diff = sign * (rows[a]["mean"] - rows[b]["mean"])
        return 0 if abs(diff) <= max(rows[a]["sd"], rows[b]["sd"]) else (1 if diff > 0 else -1)

    base = by_budget[1.0]
    tau, flips = {}, []
    for f, rows in sorted(by_budget.items()):
        if f == 1.0:
            continue
        stat = kendalltau([base[n]["mean"] for n in names], [rows[n]["mean"] for n in names])
        tau[f"{f:g}"] = None if math.isnan(stat.statistic) else float(stat.statistic)
        for a, b in itertools.combinations(names, 2):
            here, there = claim(base, a, b), claim(rows, a, b)
            if here and there == -here:
                better, worse = (a, b) if here > 0 else (b, a)
                flips.append(f"{better} > {worse} at the recipe's budget, reversed at ×{f:g}")
    return {"k": k, "budgets": budgets, "kendall_tau": tau, "flips": flips, "holds": not flips}


def summary(check: dict) -> str:
    """A few lines for the terminal."""
    taus = ", ".join(f"×{f}: τ = {tau_text(t)}" for f, t in check["kendall_tau"].items())
    steps = ", ".join(f"×{f}: {b['steps']}" for f, b in check["budgets"].items())
    lines = [f"recipe check at K = {check['k']} (steps {steps}): Kendall τ against the recipe's "
             f"ranking {taus}; "
             + ("every conclusion holds" if check["holds"] else
                f"{len(check['flips'])} conclusion(s) flip with the recipe:")]
    lines += [f"  {f}" for f in check["flips"]]
    return "\n".join(lines)


def tau_text(t: float | None) -> str:
    return "undefined (all tied)" if t is None else f"{t:+.2f}"
