"""Retraining with a fixed recipe, and the metrics that judge a selection."""

from .train import Lora, Recipe, adapt, train

__all__ = ["Lora", "Recipe", "adapt", "train"]
