"""`select`: corpus → labels → gradients → selection, as one call."""

from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from . import distributed, output, store
from .checkpoints import DTYPES, CheckpointPair, load_pair
from .config import (
    STRATEGIES,
    CorpusConfig,
    GradientConfig,
    ModelConfig,
    SelectConfig,
    SelectionConfig,
    UserError,
)
from .corpus import load_corpus
from .framings import Framing, Tokens, make_framing
from .gradients import (
    Gradients,
    Interpolation,
    LayerSet,
    Sketch,
    checkpoint_alphas,
    extract,
    resolve,
)
from .gradients.extract import auto_batch_tokens
from .labels import score_documents
from .selection import Selection, confident_rows, needs_gradients, run_strategy

log = logging.getLogger(__name__)


@dataclass
class SelectResult:
    """Everything a selection run produced, in memory."""

    config: SelectConfig
    texts: list[str]
    task: str
    label_names: list[str] | None
    labels: torch.Tensor | None  # (N,) autolabels
    loss_finetuned: torch.Tensor  # (N,)
    loss_base: torch.Tensor | None  # (N,)
    gradients: Gradients | None
    selections: dict[str, Selection]
    info: dict = field(default_factory=dict)  # resolved options and timings for the manifest

    def selected_texts(self, strategy: str) -> list[str]:
        return [self.texts[i] for i in self.selections[strategy].indices]


def make_config(**kwargs) -> SelectConfig:
    """Build a SelectConfig from flat keyword arguments (base=..., corpus=..., k=..., ...)."""
    parts = {"model": ModelConfig, "corpus": CorpusConfig, "gradients": GradientConfig,
             "selection": SelectionConfig}
    aliases = {"corpus": "path"}
    values: dict[str, dict] = {name: {} for name in parts}
    top = {}
    for key, value in kwargs.items():
        key = aliases.get(key, key)
        owners = [n for n, cls in parts.items() if key in {f.name for f in dataclasses.fields(cls)}]
        if key in ("out", "overwrite"):
            top[key] = value
        elif not owners:
            raise TypeError(f"unknown option {key!r}")
        for owner in owners:  # `seed` belongs to both gradients and selection
            values[owner][key] = value
    return SelectConfig(**{n: parts[n](**values[n]) for n in parts}, **top)


class _Clock:
    def __init__(self):
        self.stages: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        yield
        self.stages[stage] = round(time.perf_counter() - start, 3)


def select(cfg: SelectConfig | None = None, progress: bool = True, visit=None,
           **kwargs) -> SelectResult | None:
    """Run SELECT and the requested baselines; write the output folder when cfg.out is set.

    Pass a SelectConfig, or flat keywords: `select(base=..., finetuned=..., corpus=..., k=100)`.
    With `store=DIR` every pass goes to a resumable on-disk store (store.py). Under torchrun
    the ranks share the store's shards and only rank 0 selects; the others return None.
    `visit(passes)` (e.g. proportions.moments) returns extract's per-batch visitor: it sees every
    document's gradient factors at every checkpoint, during the gradient pass (with a store:
    one more pass over the corpus, since a reused store computes nothing).
    """
    cfg = cfg or make_config(**kwargs)
    _check_options(cfg)
    world, device = distributed.init(cfg.model.device)
    if world.size > 1 and not cfg.gradients.store:
        raise UserError("several processes (torchrun) need --store: each rank writes its own shards")
    cfg.model.device = device
    if cfg.out:
        output.check_destination(cfg.out, cfg.overwrite)
    clock = _Clock()
    with clock("load corpus"):
        corpus = load_corpus(cfg.corpus.path, cfg.corpus.text_column, cfg.corpus.limit)
        texts = list(corpus[cfg.corpus.text_column])
    if cfg.selection.k > len(texts):
        raise UserError(f"--k {cfg.selection.k} is larger than the corpus ({len(texts)} documents)")
    with clock("load checkpoints"):
        pair = load_pair(cfg.model, seed=cfg.gradients.seed)
        max_length = effective_max_length(cfg.corpus.max_length, pair)
        framing = make_framing(pair.task, pair.tokenizer, max_length, cfg.model)
    with clock("tokenise"):
        tokens = framing.tokenize(texts)
        _check_tokens(framing, tokens)
    info = {"task": pair.task, "documents": len(texts), "base_missing_parameters": pair.base_missing,
            "last_layer": framing.last_layer_name(pair.base), "device": str(pair.device),
            "dtype": pair.dtype, "max_length": max_length, "tokens": int(tokens.lengths.sum())}
    if pair.adapter is not None:
        info["adapter"] = {"modules": len(pair.adapter), "saved_in_full": pair.adapter_saved}
    info["head_init"] = _init_head(cfg, pair, framing)
    layers = resolve(cfg.gradients.layers, framing, pair.base, pair.finetuned, pair.adapter,
                     pair.adapter_saved, DTYPES[pair.dtype])
    info["layers"] = layers.describe()
    g = cfg.gradients
    batch_tokens = {"forward": g.batch_tokens or auto_batch_tokens(pair.base, backward=False),
                    "gradients": g.batch_tokens or auto_batch_tokens(pair.base, bool(layers.inner))}
    info["batch_tokens"] = batch_tokens
    alphas = checkpoint_alphas(g.checkpoints, g.grad_at)
    info["alphas"] = alphas
    run = _Passes(cfg, pair, framing, layers, alphas, batch_tokens)
    if g.store:
        stored = _run_store(cfg, run, texts, tokens, info, world, clock, progress)
        if stored is None:
            return None
        labels, loss_ft, loss_base, grads = stored
        if visit is not None:
            with clock("gradients (visited)"):
                run.gradients(tokens, labels if framing.autolabel else None, progress, visit(run))
        return _finish(cfg, texts, pair, framing, labels, loss_ft, loss_base, grads, info, clock,
                       progress)
    with clock("autolabel"):
        labels, loss_ft = run.score(pair.finetuned, tokens, progress,
                                    desc="autolabel" if framing.autolabel else "loss at θf")
    grads = None
    if needs_gradients(cfg.selection.strategies):
        with clock("gradients"):
            grads = run.gradients(tokens, labels, progress,
                                  None if visit is None else visit(run))
        info["projection"] = grads.projector
    loss_base = grads.base_loss if grads is not None else None
    if loss_base is None and "loss-diff" in cfg.selection.strategies:
        with clock("loss at θ0"):
            _, loss_base = run.score(pair.base, tokens, progress, labels, desc="loss at θ0")
    return _finish(cfg, texts, pair, framing, labels, loss_ft, loss_base, grads, info, clock,
                   progress)


class _Passes:
    """The passes over (part of) the corpus, with everything they share."""

    def __init__(self, cfg: SelectConfig, pair: CheckpointPair, framing: Framing, layers: LayerSet,
                 alphas: list[float], batch_tokens: dict[str, int]):
        g = cfg.gradients
        self.pair, self.framing, self.layers, self.alphas = pair, framing, layers, alphas
        self.batch_tokens, self.max_docs = batch_tokens, g.batch_size
        self.sketch = Sketch(layers.shapes(), g.projection, g.projection_dim, g.exact_max, g.seed,
                             pair.device)
        self._path: Interpolation | None = None

    @property
    def path(self) -> Interpolation:
        if self._path is None:  # built on first use: it compares every parameter once
            self._path = Interpolation(self.pair.base, self.pair.finetuned,
                                       self.framing.last_layer_name(self.pair.base),
                                       self.pair.adapter)
        return self._path

    def score(self, model, tokens: Tokens, progress: bool, labels=None, desc: str = "autolabel"):
        return score_documents(self.framing, model, tokens, self.max_docs, labels,
                               progress=progress, desc=desc,
                               batch_tokens=self.batch_tokens["forward"])

    def gradients(self, tokens: Tokens, labels, progress: bool, visit=None) -> Gradients:
        return extract(self.framing, self.path, tokens, labels, self.layers, self.sketch,
                       self.alphas, self.batch_tokens["gradients"], self.max_docs, progress,
                       visit=visit)


def _finish(cfg, texts, pair, framing, labels, loss_ft, loss_base, grads, info, clock, progress):
    """Run every strategy and write the output folder."""
    eligible = None
    if cfg.selection.confidence_quantile > 0:
        if labels is None:
            raise UserError("--confidence-quantile needs autolabels: use it with a classification "
                            "task")
        eligible = confident_rows(loss_ft.numpy(), labels.numpy(),
                                  cfg.selection.confidence_quantile)
        info["eligible_documents"] = int(eligible.sum())
    selections = {}
    for name in cfg.selection.strategies:
        with clock(f"select:{name}"):
            selections[name] = run_strategy(
                name, cfg.selection.k, grads, labels, loss_ft, loss_base,
                seed=cfg.selection.seed, reset_every=cfg.selection.reset_every, n=len(texts),
                progress=progress, greedy_method=cfg.selection.greedy,
                epsilon=cfg.selection.epsilon, device=pair.device, eligible=eligible,
            )
    info["timings_s"] = clock.stages
    result = SelectResult(cfg, texts, pair.task, _label_names(pair, framing), labels, loss_ft,
                          loss_base, grads, selections, info)
    if cfg.out:
        output.write_run(result, cfg.out, cfg.overwrite)
    return result


def _run_store(cfg, run: _Passes, texts, tokens, info, world, clock, progress):
    """Build (or resume, or reuse) the store, then open it; None on ranks other than 0."""
    g, pair, framing = cfg.gradients, run.pair, run.framing
    gs = store.GradientStore(g.store)
    spec = {
        "task": pair.task, "labels": cfg.model.labels, "prompt_template": cfg.model.prompt_template,
        "max_length": info["max_length"], "model_dtype": pair.dtype,
        "head_init": info["head_init"], "batch_tokens": run.batch_tokens, "max_docs": run.max_docs,
        "alphas": run.alphas, "layers": [la["name"] for la in info["layers"]],
        "projection": run.sketch.describe(),
        "base": store.fingerprint_model(pair.base, framing.last_layer(pair.base)),
        "finetuned": store.fingerprint_model(pair.finetuned, framing.last_layer(pair.finetuned)),
        "corpus": store.fingerprint_texts(texts),
    }
    layout = store.layout_for(len(texts), len(run.alphas), run.sketch.dim, g.shard_size,
                              g.store_dtype, run.layers.target_norm(), run.alphas,
                              run.sketch.describe())

    def compute(rows: list[int]) -> store.Shard:
        part = tokens.subset(rows)
        labels, loss_ft = run.score(pair.finetuned, part, progress=False)
        grads = run.gradients(part, labels, progress=False)
        loss_base = grads.base_loss
        if loss_base is None:  # θ0 is not among the checkpoints: one more pass for loss-diff
            _, loss_base = run.score(pair.base, part, False, labels, desc="loss at θ0")
        if labels is None:
            labels = torch.full((len(rows),), -1, dtype=torch.long)
        return store.Shard(grads.grads, grads.align, grads.sqnorm, labels, loss_ft, loss_base)

    with clock("store"):
        store.build(gs, spec, layout, run.sketch.target(run.layers.targets()), len(texts), compute,
                    world.rank, world.size, world.barrier, progress)
    if not world.main:
        return None
    opened = gs.open()
    info["projection"] = opened.gradients.projector
    info["store"] = {"path": str(gs.path), "dtype": g.store_dtype, "shards": layout["shards"]}
    return opened.labels, opened.loss_ft, opened.loss_base, opened.gradients


def _check_options(cfg: SelectConfig) -> None:
    unknown = [s for s in cfg.selection.strategies if s not in STRATEGIES]
    if unknown:
        raise UserError(f"unknown strategy {unknown[0]!r}; choose from {', '.join(STRATEGIES)}")
    if not cfg.selection.strategies:
        raise UserError("no strategy given")
    if cfg.selection.k < 1:
        raise UserError("--k must be at least 1")
    if cfg.gradients.checkpoints < 1:
        raise UserError("--checkpoints must be at least 1")
    if not 0 <= cfg.selection.confidence_quantile < 1:
        raise UserError("--confidence-quantile is a share in [0, 1)")


def _check_tokens(framing: Framing, tokens: Tokens) -> None:
    """A UserError for a document with no content."""
    bad = np.flatnonzero((tokens.content < 1) | (tokens.lengths < framing.min_tokens))
    if len(bad):
        i = int(bad[0])
        raise UserError(
            f"corpus row {i} tokenises to {int(tokens.content[i])} token(s) of text; {framing.name} "
            f"needs at least {max(1, framing.min_tokens)}: remove or lengthen it"
        )


def effective_max_length(requested: int, pair: CheckpointPair) -> int:
    """--max-length, clamped to the positions the model can embed (with a warning)."""
    limit = pair.max_positions
    if limit is not None and requested > limit:
        log.warning("--max-length %d exceeds the model's %d positions; using %d", requested,
                    limit, limit)
        return limit
    return requested


def _init_head(cfg: SelectConfig, pair: CheckpointPair, framing: Framing) -> str | None:
    """classify-head: start θ0's head from the base checkpoint, or from zeros when the base
    has none (hub classifiers rarely publish the head they started from)."""
    if pair.task != "classify-head":
        return None
    head = framing.last_module(pair.base)
    head_name = framing.last_layer_name(pair.base)
    missing = any(m.startswith(head_name + ".") for m in pair.base_missing)
    mode = cfg.model.head_init
    if mode == "auto":
        mode = "zeros" if missing else "base"
    if mode == "base" and missing:
        raise UserError(
            f"the base checkpoint has no trained {head_name}; use --head-init zeros"
        )
    if mode == "zeros":
        with torch.no_grad():
            head.weight.zero_()
            if head.bias is not None:
                head.bias.zero_()
    return mode


def _label_names(pair: CheckpointPair, framing: Framing) -> list[str] | None:
    if pair.task == "classify-tokens":
        return list(framing.labels)
    if pair.task == "classify-head":
        id2label = pair.finetuned.config.id2label
        return [str(id2label[i]) for i in range(pair.finetuned.config.num_labels)]
    return None
