"""Projections: each map equals its explicit matrix, inner products stay within their
theoretical error, and several layers combine into one unbiased sketch."""

import math

import pytest
import torch

from weights2data.gradients import Dense, Kronecker, Sketch, Target, materialise
from weights2data.gradients.projection import Exact


def _factors(b=6, t=5, c=40, h=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, c, generator=g), torch.randn(b, t, h, generator=g)


def _rel_errors(z, exact):
    norms = exact.norm(dim=1)
    return ((z @ z.T) - exact @ exact.T) / torch.outer(norms, norms)


def test_kronecker_equals_the_explicit_kronecker_matrix():
    r, h = _factors()
    proj = Kronecker(40, 24, 256, seed=1)
    full = torch.kron(proj.r_o, proj.r_i)  # (40·24, d_o·d_i), formed explicitly
    expected = materialise(r, h).flatten(1) @ full
    torch.testing.assert_close(proj.project(r, h), expected, rtol=1e-4, atol=1e-4)
    q = torch.randn(40, 24)
    torch.testing.assert_close(proj.project_target(Target(dense=q)), q.flatten() @ full,
                               rtol=1e-4, atol=1e-4)


def test_low_rank_target_is_projected_without_forming_it():
    a, b = torch.randn(3, 24), torch.randn(40, 3)
    proj = Kronecker(40, 24, 256, seed=2)
    low = Target(low_rank=(a, b, -0.5))
    torch.testing.assert_close(proj.project_target(low), proj.project_target(Target(dense=-0.5 * b @ a)),
                               rtol=1e-4, atol=1e-4)
    assert low.sqnorm() == pytest.approx(float((0.5 * b @ a).square().sum()), rel=1e-6)


@pytest.mark.parametrize("kind", ["dense-rademacher", "dense-gaussian"])
def test_dense_equals_its_matrix_and_stays_within_jl_tolerance(kind):
    r, h = _factors(c=300, h=300)  # 90,000 entries: two chunks of the map
    proj = Dense(300, 300, 1024, seed=3, kind=kind)
    matrix = torch.cat([m for _, m in proj._chunks(torch.device("cpu"))])
    assert matrix.shape == (90_000, 1024)
    exact = materialise(r, h).flatten(1)
    z = proj.project(r, h)
    torch.testing.assert_close(z, exact @ matrix, rtol=1e-4, atol=1e-3)
    # JL: |⟨Rg, Rg'⟩ − ⟨g, g'⟩| ≲ few/√d relative to ‖g‖‖g'‖
    assert _rel_errors(z, exact).abs().max() < 5 / math.sqrt(1024)


def test_dense_map_is_generated_on_its_device_and_kept_when_small():
    proj = Dense(40, 24, 64, seed=0)
    first = [m for _, m in proj._chunks(torch.device("cpu"))]
    again = [m for _, m in proj._chunks(torch.device("cpu"))]
    assert all(m.device.type == "cpu" for m in first)
    assert all(x is y for x, y in zip(first, again))  # generated once, not per batch


def _check_errors(signed: torch.Tensor, d_o: int, d_i: int) -> None:
    """Errors of (seeds, B, B) relative inner products against the Kronecker theory:
    rms ≈ √(2/d_o + 2/d_i) at worst for norms, far less between near-orthogonal gradients,
    and no bias (the seed average shrinks like 1/√seeds)."""
    diag = torch.eye(signed.shape[1], dtype=torch.bool)
    worst = math.sqrt(2 / d_o + 2 / d_i)
    rms_norms = signed[:, diag].pow(2).mean().sqrt()
    rms_cross = signed[:, ~diag].pow(2).mean().sqrt()
    assert 0.01 < rms_norms < worst
    assert rms_cross < worst / 3
    bias = signed.mean(0).abs()
    assert bias[diag].max() < 3 * rms_norms / math.sqrt(len(signed))
    assert bias[~diag].max() < 3 * rms_cross / math.sqrt(len(signed)) + 1e-3


def test_kronecker_error_scales_with_its_factors_and_averages_out():
    # Error ~ √(1/d_o + 1/d_i), not 1/√(d_o·d_i): why ⟨g, q⟩ and ‖g‖² are kept exact.
    r, h = _factors(c=400, h=48)
    exact = materialise(r, h).flatten(1)
    signed = []
    for seed in range(16):
        proj = Kronecker(400, 48, 1024, seed=seed)
        assert (proj.d_o, proj.d_i) == (32, 32)
        signed.append(_rel_errors(proj.project(r, h), exact))
    _check_errors(torch.stack(signed), 32, 32)


def test_projection_is_seeded():
    r, h = _factors()
    a = Kronecker(40, 24, 256, seed=5).project(r, h)
    torch.testing.assert_close(a, Kronecker(40, 24, 256, seed=5).project(r, h))
    assert not torch.allclose(a, Kronecker(40, 24, 256, seed=6).project(r, h))


def test_sketch_keeps_small_layer_sets_exact_side_by_side():
    shapes = {"a": (5, 7), "b": (3, 4)}
    sk = Sketch(shapes, "kronecker", 4096, exact_max=100, seed=0)
    assert sk.exact and sk.dim == 47
    assert all(isinstance(m, Exact) for m in sk.maps.values())
    (ra, ha), (rb, hb) = _factors(c=5, h=7), _factors(c=3, h=4, seed=1)
    out = torch.zeros(6, sk.dim)
    sk.add(out, "a", ra, ha)
    sk.add(out, "b", rb, hb)
    expected = torch.cat([materialise(ra, ha).flatten(1), materialise(rb, hb).flatten(1)], 1)
    torch.testing.assert_close(out, expected)


def test_summed_sketch_of_several_layers_is_unbiased_for_the_concatenation():
    shapes = {"a": (60, 20), "b": (30, 40)}
    (ra, ha), (rb, hb) = _factors(c=60, h=20), _factors(c=30, h=40, seed=1)
    exact = torch.cat([materialise(ra, ha).flatten(1), materialise(rb, hb).flatten(1)], 1)
    signed = []
    for seed in range(12):
        sk = Sketch(shapes, "kronecker", 256, exact_max=10, seed=seed)
        assert not sk.exact and sk.dim == 256
        z = torch.zeros(6, 256)
        sk.add(z, "a", ra, ha)
        sk.add(z, "b", rb, hb)
        signed.append(_rel_errors(z, exact))
    _check_errors(torch.stack(signed), 16, 16)
