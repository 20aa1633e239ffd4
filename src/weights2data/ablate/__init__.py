"""Data ablations by modular training and merging (Na et al. 2024): train one model per
equal-token base unit once, and judge any mixture of units by the parameter average of its
unit models instead of one training run per mixture."""

from .merge import merge_into, merge_units, token_weights
from .pool import Pool, PoolSpec, open_pool, train_pool, train_union
from .score import (
    EvalSet,
    load_eval_sets,
    make_eval_set,
    parse_mixtures,
    perplexity,
    score_mixtures,
)
from .units import Partition, Unit, by_column, from_files, split_units
from .validate import correlations, sample_mixtures, validate

__all__ = [
    "EvalSet", "Partition", "Pool", "PoolSpec", "Unit", "by_column", "correlations", "from_files",
    "load_eval_sets", "make_eval_set", "merge_into", "merge_units", "open_pool", "parse_mixtures",
    "perplexity", "sample_mixtures", "score_mixtures", "split_units", "token_weights", "train_pool",
    "train_union", "validate",
]
