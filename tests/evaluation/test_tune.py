from weights2data.demo.tune import best_validation_budget, flat_budget


def _table(losses: dict[str, list[float]], vals: dict[str, list[float]], budgets):
    return {n: {s: {"train_loss": loss, "val": v} for s, loss, v in zip(budgets, losses[n], vals[n])}
            for n in losses}


def test_flat_budget_needs_every_row_flat():
    budgets = (40, 80, 160)
    table = _table({"random": [0.30, 0.05, 0.02], "oracle": [0.05, 0.04, 0.03]},
                   {"random": [50, 60, 70], "oracle": [80, 85, 86]}, budgets)
    assert flat_budget(table, budgets) == 80  # random still fell 0.25 nats from 40 to 80
    table["random"][160]["train_loss"] = -0.2  # ... and from 80 to 160 now
    assert flat_budget(table, budgets) is None


def test_lm_budget_is_the_best_mean_validation_not_the_flat_loss():
    # A memorising LM: training loss keeps falling while held-out perplexity turns up.
    budgets = (13, 25, 50, 80)
    table = _table({"random": [5.0, 4.2, 3.0, 1.6], "select": [4.9, 4.0, 2.8, 1.5]},
                   {"random": [700, 650, 900, 4000], "select": [600, 640, 800, 3900]}, budgets)
    assert best_validation_budget(table, budgets) == 25  # mean 645 vs 650 at 13 steps
    assert flat_budget(table, budgets) is None
    table["random"][13]["val"] = 690  # a tie (645) goes to fewer steps
    assert best_validation_budget(table, budgets) == 13
