"""`mixture`: corpus with domains → `select()` (gradients, losses, SELECT and top-k picks) →
proportions per method → mixture.json + report.html."""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..config import (
    CorpusConfig,
    GradientConfig,
    ModelConfig,
    SelectConfig,
    SelectionConfig,
    UserError,
)
from ..corpus import load_corpus
from ..pipeline import SelectResult, select
from . import adam
from . import estimate as est
from .moments import DomainMoments, Moments

METHODS = ("adam", "gradient", "select", "topk", "loss")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class MixtureOptions:
    """Where the domains come from and how the proportions are estimated."""

    domain_column: str | None = None  # a column of the one corpus naming each row's domain
    domains: dict[str, str] | None = None  # or one corpus per domain: name -> path
    k: int | None = None  # picks of the SELECT / top-k baselines (None: a quarter of the corpus)
    bootstrap: int = 200  # resamples of the documents for the intervals (0: none)
    confidence: float = 0.95
    # How the fine-tune weighted its loss: per document (mean over a document's tokens, then over
    # the batch; weights2data's recipe, and every classifier) or per token (HF's causal-LM
    # default). The proportions are shares of that unit; both units are reported.
    weighting: Literal["documents", "tokens"] = "documents"
    # Add an "other" share when the domains explain less than this of ‖q‖² (0: never). Off by
    # default: after an Adam fine-tune the domains explain < 0.1 % of ‖q‖² even when every
    # domain is known (docs/design.md), so the residual says more about the optimiser.
    other_below: float = 0.0
    # Correct ‖ḡ_d‖² for the sampling variance of each domain's mean (docs/design.md). Off: it
    # did worse on the demo's validation seeds and on the tiny SGD case.
    debias: bool = False
    # The headline method (`MixtureResult.proportions()`); every method is computed and written
    # either way. "gradient": on the demo's validation seeds 100-102 the Adam fit from other
    # documents of each domain did worse (MAE 0.21 vs 0.15; docs/design.md).
    method: Literal["adam", "gradient"] = "gradient"
    # Adam-aware estimate (adam.py): the fine-tune's batch size B in documents (None: fitted
    # with the proportions; no better on validation, 0.218 vs 0.215), bytes for the exact per-domain moments (a uniform sample of output
    # rows beyond that), and coordinates the fit uses (a uniform sample of those).
    adam_batch: float | None = 8.0
    # Add the corpus means' sampling variance to v (adam.AdamProblem.documents); off: no better
    # on the two validation fine-tunes it was tried on.
    adam_sampling: bool = False
    moments_budget: int = 512 * 2**20
    adam_coordinates: int = 1_000_000
    seed: int = 0  # bootstrap


@dataclass
class MixtureConfig:
    """Everything `weights2data mixture` needs. `corpus.path` is the corpus with
    `mixture.domain_column`; with `mixture.domains` it is unused (may be empty)."""

    model: ModelConfig
    corpus: CorpusConfig
    gradients: GradientConfig
    mixture: MixtureOptions
    out: str | None = None
    overwrite: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class MixtureResult:
    """The estimates of every method, and the selection run they came from."""

    config: MixtureConfig
    domains: list[str]
    documents: dict[str, int]  # per domain, in the corpus
    mean_tokens: dict[str, float]  # loss tokens per document (lm; 1 for classification)
    estimates: dict[str, est.Estimate]  # method -> proportions (in the `weighting` unit)
    run: SelectResult
    info: dict = field(default_factory=dict)
    moments: Moments | None = None  # the exact per-domain moments the Adam estimate used

    def proportions(self, method: str | None = None) -> dict[str, float]:
        """A method's proportions (default: the configured headline method)."""
        return self.estimates[method or self.config.mixture.method].proportions

    def in_units(self, method: str, unit: str) -> dict[str, float]:
        """A method's proportions as shares of documents or of tokens (same domains; "other"
        is converted at the mean length of the known domains)."""
        p = self.estimates[method].proportions
        if unit == self.config.mixture.weighting:
            return dict(p)
        length = dict(self.mean_tokens)
        length.setdefault("other", float(np.mean(list(self.mean_tokens.values()))))
        factor = {d: length[d] if unit == "tokens" else 1 / length[d] for d in p}
        total = sum(p[d] * factor[d] for d in p)
        return {d: p[d] * factor[d] / total if total > 0 else 0.0 for d in p}

    def to_dict(self) -> dict:
        w = self.config.mixture.weighting
        other = "documents" if w == "tokens" else "tokens"
        return {
            "domains": self.domains, "documents": self.documents, "mean_tokens": self.mean_tokens,
            "unit": w,
            "methods": {m: {**e.to_dict(), f"proportions_{other}": self.in_units(m, other)}
                        for m, e in self.estimates.items()},
            **self.info,
        }


_PARTS = {"model": ModelConfig, "corpus": CorpusConfig, "gradients": GradientConfig,
          "mixture": MixtureOptions}


def make_mixture_config(**kwargs) -> MixtureConfig:
    """A MixtureConfig from flat keywords (base=..., corpus=..., domain_column=..., ...)."""
    values: dict[str, dict] = {name: {} for name in _PARTS}
    top = {}
    for key, value in kwargs.items():
        key = "path" if key == "corpus" else key
        owners = [n for n, cls in _PARTS.items() if key in {f.name for f in dataclasses.fields(cls)}]
        if key in ("out", "overwrite"):
            top[key] = value
        elif not owners:
            raise TypeError(f"unknown option {key!r}")
        for owner in owners:  # `seed` belongs to gradients and mixture
            values[owner][key] = value
    values["corpus"].setdefault("path", "")
    return MixtureConfig(**{n: cls(**values[n]) for n, cls in _PARTS.items()}, **top)


def parse_domains(items: list[str]) -> dict[str, str]:
    """`name=path` items → {name: path}; a UserError for a malformed or repeated name."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not _NAME.match(name) or not path:
            raise UserError(f"--domains item {item!r} is not NAME=PATH (NAME: letters, digits, "
                            "_ . + -)")
        if name in out:
            raise UserError(f"domain {name!r} is given twice in --domains; use each name once")
        out[name] = path
    return out


def _check_options(cfg: MixtureConfig) -> None:
    m = cfg.mixture
    if m.domains is not None and (m.domain_column is not None or cfg.corpus.path):
        raise UserError("give --corpus with --domain-column, or --domains, not both")
    if (m.domain_column is None) == (m.domains is None):
        raise UserError("give either --domain-column (one corpus) or --domains NAME=PATH ... "
                        "(one corpus per domain)")
    if m.domains is not None:
        if len(m.domains) < 2:
            raise UserError(f"a mixture needs at least 2 domains, got {len(m.domains)}; add "
                            "corpora of the other domains")
        parse_domains([f"{k}={v}" for k, v in m.domains.items()])  # same checks as the CLI
    elif not cfg.corpus.path:
        raise UserError("--domain-column needs --corpus")
    if m.bootstrap < 0:
        raise UserError("--bootstrap must be 0 or more")
    if not 0 < m.confidence < 1:
        raise UserError("--confidence is a probability in (0, 1)")
    if m.k is not None and m.k < 1:
        raise UserError("--k must be at least 1")
    if cfg.gradients.checkpoints < 1:
        raise UserError("--checkpoints must be at least 1")
    if m.method not in ("adam", "gradient"):
        raise UserError(f"--method is adam or gradient, not {m.method!r}")
    if m.adam_batch is not None and not m.adam_batch >= 1:
        raise UserError("--adam-batch is the fine-tune's batch size: at least 1 (or 'fit')")
    if m.moments_budget < 1 or m.adam_coordinates < 1:
        raise UserError("--moments-budget and --adam-coordinates must be positive")


def load_domains(cfg: MixtureConfig) -> tuple[list[str], list[str], np.ndarray]:
    """(texts, domain names, (N,) domain index per row), every error a one-line UserError."""
    m, text = cfg.mixture, cfg.corpus.text_column
    if m.domains is not None:
        texts, domain = [], []
        for k, (name, path) in enumerate(m.domains.items()):
            try:
                ds = load_corpus(path, text, cfg.corpus.limit)
            except UserError as err:
                raise UserError(f"domain {name!r}: {err}") from err
            texts += list(ds[text])
            domain += [k] * len(ds)
        return texts, list(m.domains), np.asarray(domain)
    ds = load_corpus(cfg.corpus.path, text, cfg.corpus.limit)
    if m.domain_column not in ds.column_names:
        raise UserError(f"corpus {cfg.corpus.path} has no column {m.domain_column!r} (columns: "
                        f"{', '.join(ds.column_names)}); pass --domain-column")
    values = list(ds[m.domain_column])
    for i, v in enumerate(values):
        if v is None or not str(v).strip():
            raise UserError(f"corpus row {i} has no {m.domain_column!r}: every document needs a "
                            "domain (remove the row or name its domain)")
    names = sorted({str(v) for v in values})
    index = {n: k for k, n in enumerate(names)}
    domain = np.asarray([index[str(v)] for v in values])
    est.check_domains(domain, names)
    return list(ds[text]), names, domain


def _select_config(cfg: MixtureConfig, corpus: CorpusConfig, k: int) -> SelectConfig:
    strategies = ["select", "topk"]
    if cfg.gradients.grad_at == "finetuned":
        strategies.append("loss-diff")  # θ0 is not a checkpoint: loss-diff makes select() score it
    return SelectConfig(model=cfg.model, corpus=corpus, gradients=cfg.gradients,
                        selection=SelectionConfig(k=k, strategies=strategies, seed=cfg.gradients.seed))


def _loss_tokens(cfg: MixtureConfig, task: str, texts: list[str]) -> np.ndarray:
    """Tokens each document's loss is averaged over (lm: predicted positions), 1 per document
    for classification."""
    if task != "lm":
        return np.ones(len(texts))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cfg.model.base, gguf_file=cfg.model.gguf_file,
                                        trust_remote_code=cfg.model.trust_remote_code)
    enc = tok(texts, truncation=True, max_length=cfg.corpus.max_length)
    return np.asarray([max(len(ids) - 1, 1) for ids in enc["input_ids"]], dtype=np.float64)


def mixture(cfg: MixtureConfig | None = None, progress: bool = True,
            **kwargs) -> MixtureResult | None:
    """Estimate the domain proportions of a fine-tune (see estimate.py for the math).

    Pass a MixtureConfig or flat keywords: `mixture(base=..., finetuned=..., corpus=...,
    domain_column="source")` or `mixture(base=..., finetuned=..., domains={"code": "c.jsonl",
    "chat": "d.jsonl"})`. With `out=DIR` writes mixture.json, report.html and manifest.json.
    Under torchrun, ranks other than 0 only help build the `store` and return None.
    """
    from .. import output

    cfg = cfg or make_mixture_config(**kwargs)
    _check_options(cfg)
    if cfg.out:
        output.check_destination(cfg.out, cfg.overwrite)
    start = time.perf_counter()
    texts, names, domain = load_domains(cfg)
    est.check_domains(domain, names)
    from ..checkpoints import detect_task

    task = detect_task(cfg.model)
    if cfg.mixture.weighting == "tokens" and task != "lm":
        raise UserError("--weighting tokens is for language models; a classifier's loss "
                        "weighs documents")
    k = cfg.mixture.k or max(1, len(texts) // 4)
    if k > len(texts):
        raise UserError(f"--k {k} is larger than the corpus ({len(texts)} documents)")
    tokens = _loss_tokens(cfg, task, texts)
    weight = tokens if cfg.mixture.weighting == "tokens" else None
    m = cfg.mixture
    visit = DomainMoments(domain, np.ones(len(texts)) if weight is None else weight, names,
                          second=True, budget=m.moments_budget)
    with tempfile.TemporaryDirectory(prefix="w2d-mixture-") as tmp:
        corpus = cfg.corpus
        if cfg.mixture.domains is not None:  # one corpus for select(), in domain order
            path = Path(tmp) / "corpus.jsonl"
            path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
            corpus = CorpusConfig(str(path), "text", cfg.corpus.max_length)
        run = select(_select_config(cfg, corpus, k), progress=progress, visit=visit)
    if run is None:  # a torchrun rank other than 0: it only helped build the store
        return None
    t0 = time.perf_counter()
    rows = est.DomainRows.from_gradients(run.gradients, domain, names, weight)
    moments = visit.result()
    estimates = {
        "adam": adam.adam_estimate(moments, m.adam_batch, max_coordinates=m.adam_coordinates,
                                   seed=m.seed, sampling=m.adam_sampling),
        "gradient": est.gradient_estimate(rows, m.bootstrap, m.confidence, m.other_below, m.seed,
                                          m.debias),
        "select": est.pick_shares(run.selections["select"].indices, domain, names, "select"),
        "topk": est.pick_shares(run.selections["topk"].indices, domain, names, "topk"),
        "loss": est.loss_estimate(run.loss_base.numpy(), run.loss_finetuned.numpy(), domain,
                                  names, weight),
    }
    info = {"k": k, "task": run.task, "select": run.info,
            "timings_s": {**run.info.get("timings_s", {}),
                          "estimate": round(time.perf_counter() - t0, 3),
                          "total": round(time.perf_counter() - start, 3)}}
    result = MixtureResult(
        cfg, names, {n: int(c) for n, c in zip(names, np.bincount(domain, minlength=len(names)))},
        {n: float(tokens[domain == i].mean()) for i, n in enumerate(names)}, estimates, run, info,
        moments)
    if cfg.out:
        from .report import write_output

        write_output(result, cfg.out, cfg.overwrite)
    return result
