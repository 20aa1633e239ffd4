"""Exact per-domain gradient moments equal the sums of the pipeline's per-document gradients
(exact rows from `extract`, which tests/gradients/test_layers.py checks against torch.func)."""

import numpy as np
import pytest
import tiny
import torch

from weights2data.config import ModelConfig
from weights2data.framings import make_framing
from weights2data.gradients import Interpolation, Sketch, extract, resolve
from weights2data.proportions import moments as mom

NAMES = ["a", "b", "c"]


class _Passes:
    """The parts of pipeline._Passes that domain_moments reads."""

    def __init__(self, pair, framing, layers, alphas, batch_tokens):
        self.pair, self.framing, self.layers, self.alphas = pair, framing, layers, alphas
        self.path = Interpolation(pair.base, pair.finetuned, framing.last_layer_name(pair.base))
        self.sketch = Sketch(layers.shapes(), "kronecker", 64, exact_max=10**9, seed=0)  # exact
        self.batch_tokens, self.max_docs = {"gradients": batch_tokens}, None


class _Pair:
    def __init__(self, base, finetuned):
        self.base, self.finetuned = base, finetuned
        self.device, self.dtype = torch.device("cpu"), "float32"


def _setup(layer_names):
    model, tok = tiny.llama_lm()
    model = tiny.perturbed(model, 0.2)
    finetuned = tiny.perturbed(model, 0.05, seed=3)
    tok.padding_side = "right"
    framing = make_framing("lm", tok, 32, ModelConfig("b", "f", task="lm"))
    layers = resolve(layer_names, framing, model, finetuned)
    texts = [r["text"] for r in tiny.corpus(14)]
    tokens = framing.tokenize(texts)
    domain = np.arange(len(texts)) % 3
    domain[:2] = 0  # unequal domain sizes
    weight = np.random.default_rng(0).uniform(0.5, 3.0, len(texts))
    # 40 padded tokens per batch: several batches, each mixing domains
    return _Passes(_Pair(model, finetuned), framing, layers, [0.0, 0.5, 0.75], 40), tokens, domain, weight


@pytest.mark.parametrize("layer_names", [["lm_head"], ["model.layers.0.self_attn.q_proj",
                                                       "model.layers.1.mlp.down_proj", "lm_head"]])
def test_domain_sums_equal_sums_of_per_document_gradients(layer_names):
    passes, tokens, domain, weight = _setup(layer_names)
    got = mom.domain_moments(passes, tokens, None, domain, weight, NAMES, second=True,
                             progress=False)
    grads = extract(passes.framing, passes.path, tokens, None, passes.layers, passes.sketch,
                    passes.alphas, 10**6, progress=False)  # exact rows, one batch
    assert len(passes.layers.layers) == len(layer_names)
    first, second = got.by_checkpoint("first"), got.by_checkpoint("second")
    g = grads.grads.double()  # (P, N, Σ O·I')
    for k in range(3):
        u = torch.as_tensor(weight * (domain == k)).double()
        want1 = torch.einsum("n,pnd->pd", u, g) / u.sum()
        want2 = torch.einsum("n,pnd->pd", u, g.square()) / u.sum()
        torch.testing.assert_close(first[:, k].double(), want1, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(second[:, k].double(), want2, rtol=1e-4, atol=1e-9)
    q = torch.cat([la.target.matrix().flatten() for la in passes.layers.layers])
    torch.testing.assert_close(got.flat_target(), q)
    assert got.q_norm2 == pytest.approx(float(q.square().sum()), rel=1e-5)
    assert got.coordinates == got.total == q.numel()


def test_a_budget_keeps_a_share_of_rows_and_the_same_numbers_on_them():
    passes, tokens, domain, weight = _setup(["lm_head"])
    full = mom.domain_moments(passes, tokens, None, domain, weight, NAMES, progress=False)
    rows, cols = passes.layers.layers[0].shape
    budget = 3 * 3 * cols * 4 * 2 * (rows // 4)  # a quarter of the rows, both moments
    part = mom.domain_moments(passes, tokens, None, domain, weight, NAMES, budget=budget,
                              progress=False)
    keep = part.rows["lm_head"]
    assert keep is not None and len(keep) == rows // 4 and len(set(keep.tolist())) == len(keep)
    assert part.coordinates == len(keep) * cols and part.total == rows * cols
    torch.testing.assert_close(part.first["lm_head"], full.first["lm_head"][:, :, keep])
    torch.testing.assert_close(part.second["lm_head"], full.second["lm_head"][:, :, keep])
    torch.testing.assert_close(part.target["lm_head"], full.target["lm_head"][keep])


def test_select_shows_its_gradient_pass_to_the_visitor_with_and_without_a_store(tmp_path):
    from weights2data.pipeline import select

    model, tok = tiny.llama_lm()
    base = tiny.save(model, tok, tmp_path / "base")
    ft = tiny.save(tiny.perturbed(model, 0.05, seed=3), tok, tmp_path / "ft")
    corpus = tiny.write_jsonl(tiny.corpus(12), tmp_path / "corpus.jsonl")
    domain = np.arange(12) % 3
    got = []
    for store in (None, str(tmp_path / "store")):
        visit = mom.DomainMoments(domain, np.ones(12), NAMES)
        select(base=base, finetuned=ft, corpus=str(corpus), k=2, strategies=["topk"],
               max_length=32, store=store, progress=False, visit=visit)
        got.append(visit.result())
    assert got[0].first["lm_head"].abs().sum() > 0
    for which in ("first", "second"):
        torch.testing.assert_close(got[0].by_checkpoint(which), got[1].by_checkpoint(which))
    torch.testing.assert_close(got[0].documents, torch.full((3,), 4.0, dtype=torch.float64))
