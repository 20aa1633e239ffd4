"""The incremental greedy returns exactly the brute-force greedy's selection."""

import numpy as np
import pytest
import torch

from weights2data.selection import baselines, greedy


def _problem(p=2, n=60, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(p, d, generator=g, dtype=torch.float64)
    # a mix of aligned, opposed and orthogonal-ish gradients, like a real corpus
    grads = torch.randn(p, n, d, generator=g, dtype=torch.float64) + 0.3 * q[:, None] * torch.randn(
        1, n, 1, generator=g, dtype=torch.float64)
    return grads, q


def brute_force(grads, q, k, reset_every=None):
    """Recompute mean_j cos(S_j + g_ji, q_j) for every candidate at every step, in float64."""
    p, n, _ = grads.shape
    s = torch.zeros_like(q)
    picked = []
    for step in range(k):
        if reset_every and step and step % reset_every == 0:
            s = torch.zeros_like(q)
        best, best_i = -np.inf, -1
        for i in range(n):
            if i in picked:
                continue
            cand = s + grads[:, i]
            score = torch.nn.functional.cosine_similarity(cand, q, dim=1).mean().item()
            if score > best:
                best, best_i = score, i
        picked.append(best_i)
        s = s + grads[:, best_i]
    return picked


def _greedy(grads, q, k, reset_every=None, dtype=torch.float64):
    g = grads.to(dtype)
    align = torch.einsum("pnd,pd->pn", grads, q)
    sqnorm = grads.square().sum(-1)
    return greedy(g, align, sqnorm, _qnorm(q), k, reset_every)


def _qnorm(q):
    # greedy takes one ‖q‖: the target is the same at every checkpoint
    assert torch.equal(q, q[:1].expand_as(q))
    return float(q[0].norm())


@pytest.mark.parametrize("p", [1, 3])
def test_incremental_equals_brute_force(p):
    grads, q = _problem(p=p)
    q = q[:1].expand(p, -1).clone()  # one target for all checkpoints, as in the method
    sel = _greedy(grads, q, 15)
    assert sel.indices == brute_force(grads, q, 15)


def test_float32_incremental_equals_float64_brute_force():
    grads, q = _problem(p=2, n=80)
    q = q[:1].expand(2, -1).clone()
    sel = _greedy(grads, q, 20, dtype=torch.float32)
    assert sel.indices == brute_force(grads, q, 20)


def test_select_batched_resets_the_sum():
    grads, q = _problem(p=1, n=50)
    sel = _greedy(grads, q, 12, reset_every=4)
    assert sel.indices == brute_force(grads, q, 12, reset_every=4)
    assert sel.strategy == "select-batched"


def test_curve_is_cosine_of_the_running_sum():
    grads, q = _problem(p=1, n=40)
    sel = _greedy(grads, q, 10)
    s = grads[0, sel.indices].cumsum(0)
    expected = torch.nn.functional.cosine_similarity(s, q[0][None], dim=1)
    np.testing.assert_allclose(sel.curve, expected.numpy(), rtol=1e-6)
    assert sel.peak[1] == pytest.approx(float(expected.max()))


def test_topk_balanced_gives_equal_quotas():
    cos = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.1])
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 2])
    sel = baselines.topk_balanced(cos, labels, 6)
    assert sel.indices == [0, 5, 7, 1, 6, 2]  # one per label per round; label 2 runs out
    assert baselines.topk(cos, 3).indices == [0, 1, 2]


def test_loss_strategies_pick_the_right_end():
    loss_ft = np.array([3.0, 1.0, 2.0, 0.5])
    loss_base = np.array([3.5, 1.0, 4.0, 0.5])
    assert baselines.loss_min(loss_ft, 2).indices == [3, 1]  # lowest, not highest
    assert baselines.loss_max(loss_ft, 2).indices == [0, 2]
    assert baselines.loss_diff(loss_ft, loss_base, 2).indices == [2, 0]


def test_random_is_seeded_and_without_replacement():
    a = baselines.random(100, 30, seed=4).indices
    assert a == baselines.random(100, 30, seed=4).indices
    assert len(set(a)) == 30
    assert a != baselines.random(100, 30, seed=5).indices


@pytest.mark.parametrize("method", ["exact", "stochastic"])
def test_excluded_rows_are_never_picked_and_the_rest_is_the_subset_greedy(method):
    """Excluding rows == running the greedy on the remaining rows only (--confidence-quantile)."""
    grads, q = _problem(p=2)
    q = q[:1].expand(2, -1).clone()
    keep = np.flatnonzero(np.arange(grads.shape[1]) % 3 != 0)
    align = torch.einsum("pnd,pd->pn", grads, q)
    sqnorm = grads.square().sum(-1)
    exclude = torch.ones(grads.shape[1], dtype=torch.bool)
    exclude[keep] = False
    sel = greedy(grads, align, sqnorm, _qnorm(q), 12, method=method, epsilon=1e-12,
                 exclude=exclude)
    assert sel.indices == keep[brute_force(grads[:, keep], q, 12)].tolist()
    with pytest.raises(ValueError, match="pickable"):
        greedy(grads, align, sqnorm, _qnorm(q), len(keep) + 1, exclude=exclude)


def test_every_strategy_respects_eligible_rows():
    from weights2data.gradients.extract import Gradients
    from weights2data.selection import run_strategy

    grads, q = _problem(p=1, n=40)
    n = grads.shape[1]
    g = Gradients(grads.float(), torch.einsum("pnd,pd->pn", grads, q).float(),
                  grads.square().sum(-1).float(), q[0].float(), float(q[0].norm()), [0.0])
    labels = torch.arange(n) % 4
    loss_ft, loss_base = torch.rand(n), torch.rand(n)
    eligible = (torch.arange(n) % 2 == 0).numpy()
    for name in ["select", "topk", "topk-balanced", "random", "loss-min", "loss-max", "loss-diff"]:
        sel = run_strategy(name, 8, g, labels, loss_ft, loss_base, n=n, eligible=eligible)
        assert len(set(sel.indices)) == 8 and eligible[sel.indices].all(), name
    full = run_strategy("loss-min", 8, g, labels, loss_ft, loss_base, n=n)
    assert sorted(run_strategy("loss-min", 8, g, labels, loss_ft, loss_base, n=n,
                               eligible=np.ones(n, bool)).indices) == sorted(full.indices)
