"""Retraining with a fixed recipe, and the metrics that judge a selection."""

from .train import Recipe, train

__all__ = ["Recipe", "train"]
