"""Task framings: each knows its last layer, its hidden states and its loss."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from ..config import ModelConfig, UserError
from .base import Framing, Positions
from .classify_head import ClassifyHead
from .classify_tokens import ClassifyTokens, label_token_ids
from .lm import LanguageModel
from .tokens import Tokens

__all__ = ["Framing", "Positions", "Tokens", "ClassifyHead", "ClassifyTokens", "LanguageModel",
           "make_framing", "label_token_ids"]


def make_framing(task: str, tokenizer: PreTrainedTokenizerBase, max_length: int, cfg: ModelConfig) -> Framing:
    if task == "classify-head":
        return ClassifyHead(tokenizer, max_length)
    if task == "classify-tokens":
        if not cfg.labels:
            raise UserError("--task classify-tokens needs --labels (the label words, in class order)")
        return ClassifyTokens(tokenizer, max_length, cfg.labels, cfg.prompt_template)
    if task == "lm":
        return LanguageModel(tokenizer, max_length)
    raise UserError(f"unknown task {task!r} (classify-head, classify-tokens or lm)")
