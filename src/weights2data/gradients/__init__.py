"""Per-example gradients of chosen layers, in closed form or from one partial backward pass,
and their projections."""

from .closed_form import alignment, materialise, residuals, residuals_and_loss, squared_norms
from .extract import Gradients, batch_gradients, checkpoint_alphas, extract
from .interpolate import Interpolation
from .layers import Layer, LayerSet, resolve
from .projection import Dense, Exact, Kronecker, Projector, Sketch, make_projector
from .targets import Target

__all__ = [
    "Gradients", "batch_gradients", "checkpoint_alphas", "extract", "Interpolation",
    "Layer", "LayerSet", "resolve", "Target",
    "alignment", "materialise", "residuals", "residuals_and_loss", "squared_norms",
    "Projector", "Exact", "Kronecker", "Dense", "Sketch", "make_projector",
]
