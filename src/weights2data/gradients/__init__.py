"""Closed-form per-example last-layer gradients and their projections."""

from .closed_form import alignment, materialise, residuals, squared_norms
from .extract import Gradients, checkpoint_alphas, extract, interpolated
from .projection import Dense, Exact, Kronecker, Projector, make_projector

__all__ = [
    "Gradients", "checkpoint_alphas", "extract", "interpolated",
    "alignment", "materialise", "residuals", "squared_norms",
    "Projector", "Exact", "Kronecker", "Dense", "make_projector",
]
