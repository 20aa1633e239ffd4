"""Retrain a fresh copy of θ0 on a selection with the one fixed recipe, over several seeds,
and measure the task metric on a test set."""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass, replace

import torch
from transformers import PreTrainedModel

from ..checkpoints import CheckpointPair, load_pair
from ..config import SelectConfig
from ..framings import Framing, make_framing
from ..pipeline import _init_head
from .metrics import accuracy, perplexity
from .train import Recipe, train


@dataclass
class Setup:
    """θ0 exactly as `select` saw it (same seeded missing weights, same head init), θf, and
    the framing both are trained and judged with."""

    pair: CheckpointPair
    framing: Framing
    head_init: str | None

    @property
    def task(self) -> str:
        return self.pair.task

    @property
    def metric(self) -> str:
        return "perplexity" if self.task == "lm" else "accuracy"


def load_setup(cfg: SelectConfig) -> Setup:
    """Load the checkpoints of a `select` config; with --head-init zeros the head of the
    base that will be retrained starts from zeros too, as it did for the gradients."""
    pair = load_pair(cfg.model, seed=cfg.gradients.seed)
    framing = make_framing(pair.task, pair.tokenizer, cfg.corpus.max_length, cfg.model)
    head_init = _init_head(cfg, pair, framing)
    return Setup(pair, framing, head_init)


def measure(setup: Setup, model: PreTrainedModel, test_texts: list[str],
            test_labels: list[int] | None, batch_size: int = 32) -> float:
    """Accuracy in % (classification) or perplexity (lm) of `model` on the test set."""
    if setup.task == "lm":
        return perplexity(setup.framing, model, test_texts, batch_size)
    return 100 * accuracy(setup.framing, model, test_texts, test_labels, batch_size)


def summarise(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def retrain(
    setup: Setup,
    texts: list[str],
    labels: list[int] | torch.Tensor | None,
    recipe: Recipe,
    seeds: list[int],
    test_texts: list[str],
    test_labels: list[int] | None,
    progress: bool = False,
) -> dict:
    """For each seed: copy θ0, train it on (texts, labels) with `recipe` (seeded), measure.
    Returns {"metric", "mean", "sd", "values", "seeds"}."""
    if setup.task != "lm" and labels is None:
        raise ValueError("classification retraining needs labels")
    values = []
    for seed in seeds:
        model = copy.deepcopy(setup.pair.base)
        train(model, setup.framing, texts, None if setup.task == "lm" else labels,
              replace(recipe, seed=seed), progress=progress)
        values.append(measure(setup, model, test_texts, test_labels))
        del model
    return {"metric": setup.metric, **summarise(values), "seeds": list(seeds)}
