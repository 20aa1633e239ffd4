"""Projected inner products stay within Johnson–Lindenstrauss tolerance of exact ones."""

import math

import pytest
import torch

from weights2data.gradients import Dense, Exact, Kronecker, make_projector, materialise


def _factors(b=6, t=5, c=40, h=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, c, generator=g), torch.randn(b, t, h, generator=g)


def _rel_errors(proj, r, h):
    exact = materialise(r, h).flatten(1)
    z = proj.project(r, h)
    norms = exact.norm(dim=1)
    return ((z @ z.T) - exact @ exact.T).abs() / torch.outer(norms, norms)


@pytest.mark.parametrize("kind", ["dense-rademacher", "dense-gaussian"])
def test_dense_inner_products_within_jl_tolerance(kind):
    r, h = _factors()
    proj = Dense(r.shape[2], h.shape[2], 1024, seed=3, kind=kind)
    assert _rel_errors(proj, r, h).max() < 5 / math.sqrt(proj.dim)
    q = torch.randn(r.shape[2], h.shape[2])
    torch.testing.assert_close(proj.project_matrix(q), proj.project_flat(q.flatten()[None])[0])


def test_kronecker_inner_products_within_tolerance_and_unbiased():
    # A Kronecker map's error scales with its factor sizes (d_c, d_h), not with d = d_c·d_h:
    # that is why selection keeps ⟨g, q⟩ and ‖g‖² exact and projects only the cross terms.
    r, h = _factors(c=400, h=48)
    errs, signed = [], []
    exact = materialise(r, h).flatten(1)
    for seed in range(16):
        proj = Kronecker(400, 48, 1024, seed=seed)
        assert (proj.d_c, proj.d_h) == (32, 32)
        errs.append(_rel_errors(proj, r, h).max())
        z = proj.project(r, h)
        signed.append((z @ z.T - exact @ exact.T) / torch.outer(exact.norm(dim=1), exact.norm(dim=1)))
    bound = 4 * math.sqrt(2 / 32 + 2 / 32)
    assert max(errs) < bound
    assert torch.stack(signed).mean(0).abs().max() < bound / 2  # averages out: unbiased


def test_kronecker_factored_equals_projecting_the_materialised_gradient():
    r, h = _factors()
    proj = Kronecker(r.shape[2], h.shape[2], 256, seed=1)
    full = materialise(r, h)
    expected = torch.stack([(proj.r_c.T @ g @ proj.r_h).flatten() for g in full])
    torch.testing.assert_close(proj.project(r, h), expected, rtol=1e-4, atol=1e-4)


def test_projection_is_seeded():
    r, h = _factors()
    a = Kronecker(40, 24, 256, seed=5).project(r, h)
    torch.testing.assert_close(a, Kronecker(40, 24, 256, seed=5).project(r, h))
    assert not torch.allclose(a, Kronecker(40, 24, 256, seed=6).project(r, h))
    d = Dense(40, 24, 256, seed=5).project(r, h)
    torch.testing.assert_close(d, Dense(40, 24, 256, seed=5).project(r, h))


def test_small_layers_stay_exact():
    assert isinstance(make_projector(5, 385, "kronecker", 4096, 65_536, 0), Exact)
    assert isinstance(make_projector(50_000, 64, "kronecker", 4096, 65_536, 0), Kronecker)
    assert isinstance(make_projector(50_000, 64, "dense-gaussian", 512, 65_536, 0), Dense)
