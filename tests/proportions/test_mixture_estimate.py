"""The estimate's math on synthetic gradients with known proportions."""

import numpy as np
import pytest
import torch

from weights2data.config import UserError
from weights2data.gradients import Gradients
from weights2data.proportions import estimate as est

NAMES = ["code", "news", "chat"]


def synthetic(weights, p=3, per_domain=(20, 30, 25), d=12, seed=0, length_weighted=None):
    """Gradients whose checkpoint-averaged domain means mix exactly into q with `weights`."""
    g = torch.Generator().manual_seed(seed)
    domain = np.repeat(np.arange(len(per_domain)), per_domain)
    centres = torch.randn(len(per_domain), d, generator=g, dtype=torch.float64)
    grads = centres[domain][None] + 0.7 * torch.randn(p, len(domain), d, generator=g,
                                                      dtype=torch.float64)
    grads *= torch.tensor([1.0, 0.6, 0.3][:p], dtype=torch.float64)[:, None, None]  # shrinking
    u = np.ones(len(domain)) if length_weighted is None else length_weighted
    rows = grads.mean(0).numpy()
    means = np.stack([(u[domain == k, None] * rows[domain == k]).sum(0) / u[domain == k].sum()
                      for k in range(len(per_domain))])
    q = torch.from_numpy(np.asarray(weights, dtype=np.float64) @ means)
    gr = Gradients(grads=grads.float(), align=(grads @ q).float(), sqnorm=(grads ** 2).sum(-1).float(),
                   target=q.float(), target_norm=q.norm().item(), alphas=[j / p for j in range(p)])
    return gr, domain


@pytest.mark.parametrize("weights", [[3.0, 1.0, 0.0], [0.2, 0.5, 0.3], [1.0, 1.0, 1.0]])
def test_exact_mixture_is_recovered(weights):
    gr, domain = synthetic(weights)
    rows = est.DomainRows.from_gradients(gr, domain, NAMES)
    e = est.gradient_estimate(rows, bootstrap=50, debias=False)
    truth = np.asarray(weights) / sum(weights)
    np.testing.assert_allclose([e.proportions[n] for n in NAMES], truth, atol=1e-4)
    assert e.extra["explained"] > 1 - 1e-6
    assert not e.extra["other_added"]
    for n in NAMES:
        assert e.low[n] <= e.proportions[n] + 1e-9 and e.proportions[n] <= e.high[n] + 1e-9


def test_token_weighting_changes_the_means():
    lengths = np.random.default_rng(0).integers(2, 40, size=75).astype(float)
    gr, domain = synthetic([0.5, 0.3, 0.2], length_weighted=lengths)
    rows = est.DomainRows.from_gradients(gr, domain, NAMES, weight=lengths)
    e = est.gradient_estimate(rows, bootstrap=0, debias=False)
    np.testing.assert_allclose([e.proportions[n] for n in NAMES], [0.5, 0.3, 0.2], atol=1e-4)
    unweighted = est.gradient_estimate(est.DomainRows.from_gradients(gr, domain, NAMES), bootstrap=0,
                                       debias=False)
    assert abs(unweighted.proportions["code"] - 0.5) > 1e-3


def test_nnls_gram_matches_brute_force():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(30, 4))
    y = rng.normal(size=30)
    from scipy.optimize import nnls

    w_ref, r_ref = nnls(a, y)
    w, res2 = est.nnls_gram(a.T @ a, a.T @ y, float(y @ y))
    np.testing.assert_allclose(w, w_ref, atol=1e-6)
    assert res2 == pytest.approx(r_ref ** 2, rel=1e-6)


def test_unexplained_target_adds_other():
    gr, domain = synthetic([0.5, 0.5, 0.0])
    rows = est.DomainRows.from_gradients(gr, domain, NAMES)
    # a component orthogonal to every domain mean, as large as the explained part
    means = np.stack([rows.rows[domain == k].mean(0) for k in range(3)])
    extra = np.linalg.svd(means)[2][-1]
    extra *= np.linalg.norm(rows.q) * 1.5
    rows.q = rows.q + extra
    rows.align = rows.align + rows.rows @ extra
    rows.q_norm2 = float(rows.q @ rows.q)
    assert "other" not in est.gradient_estimate(rows, bootstrap=0).proportions  # off by default
    e = est.gradient_estimate(rows, bootstrap=0, other_below=0.5)
    assert e.extra["other_added"] and e.proportions["other"] > 0.3
    assert e.proportions["code"] == pytest.approx(e.proportions["news"], rel=1e-4)


def test_bad_domains():
    with pytest.raises(UserError, match="at least 2 domains"):
        est.check_domains(np.zeros(5, int), ["only"])
    with pytest.raises(UserError, match="'chat' has no documents"):
        est.check_domains(np.array([0, 0, 1, 1]), NAMES)


def test_baselines():
    domain = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    e = est.pick_shares([0, 1, 4], domain, NAMES, "select")
    # 2 of 4 code documents, 1 of 2 news: equal enrichment
    assert e.proportions == pytest.approx({"code": 0.5, "news": 0.5, "chat": 0.0})
    loss = est.loss_estimate(np.full(8, 2.0), np.array([1, 1, 1, 1, 1.5, 1.5, 2.5, 2.5]),
                             domain, NAMES)
    assert loss.proportions == pytest.approx({"code": 2 / 3, "news": 1 / 3, "chat": 0.0})
    assert est.mean_absolute_error({"code": 0.5, "news": 0.5}, {"code": 0.7, "news": 0.2,
                                                                 "chat": 0.1}) == pytest.approx(0.2)
