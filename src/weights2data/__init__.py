"""weights2data: which data was a model fine-tuned on, and which data mixture would help?

    import weights2data as w2d
    result = w2d.select(base="...", finetuned="...", corpus="docs.jsonl", k=1000,
                        strategies=["select", "random"], out="runs/x")
    mix = w2d.mixture(base="...", finetuned="...", corpus="docs.jsonl", domain_column="source")
"""

from .config import (
    STRATEGIES,
    CorpusConfig,
    GradientConfig,
    ModelConfig,
    SelectConfig,
    SelectionConfig,
    UserError,
)
from .pipeline import SelectResult, make_config, select
from .proportions.pipeline import (
    MixtureConfig,
    MixtureOptions,
    MixtureResult,
    make_mixture_config,
    mixture,
)
from .selection import Selection

__all__ = [
    "select", "make_config", "SelectResult", "Selection", "SelectConfig", "ModelConfig",
    "CorpusConfig", "GradientConfig", "SelectionConfig", "UserError", "STRATEGIES",
    "mixture", "make_mixture_config", "MixtureConfig", "MixtureOptions", "MixtureResult",
]
