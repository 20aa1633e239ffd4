"""The Adam-aware mixture fit: exact on targets its model generates, and better than the linear
NNLS on a tiny Llama really fine-tuned with torch.optim.Adam."""

import numpy as np
import pytest
import torch

from weights2data.proportions import adam


def _problem(seed=0, p=3, d=3, n=4000):
    """Domain moments with per-coordinate sign disagreement, like per-document gradients."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(p, d, n, generator=g) * torch.rand(1, d, n, generator=g)
    s = mu.square() + torch.rand(p, d, n, generator=g) * 2.0  # E g² ≥ (E g)²
    return mu, s


@pytest.mark.parametrize("truth, batch", [([0.6, 0.3, 0.1], 8.0), ([0.15, 0.0, 0.85], 2.0)])
def test_recovers_proportions_from_a_target_it_generates(truth, batch):
    mu, s = _problem()
    pi = torch.tensor(truth)
    exact = adam.AdamProblem(mu, s, torch.zeros(mu.shape[-1]))
    q = 3e-4 * exact.update(pi, torch.tensor(1 / batch))  # lr·(steps) scale is irrelevant
    problem = adam.AdamProblem(mu, s, q)
    got, cos, b = adam.fit(problem, batch)
    assert cos == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(got, truth, atol=2e-3)
    got, cos, b = adam.fit(problem, None)  # B fitted with π
    np.testing.assert_allclose(got, truth, atol=1e-2)
    assert b == pytest.approx(batch, rel=0.1) and cos == pytest.approx(1.0, abs=1e-4)
    # the linear model of the same q is not exact: the test can tell the two apart
    lin = adam.AdamProblem(mu, s, q)
    m = torch.einsum("d,pdn->n", pi, mu) / len(mu)
    assert float(m @ lin.q / (m.norm() * lin.q.norm())) < 0.95


def test_an_infinite_batch_is_the_sign_of_the_mean_gradient():
    mu, s = _problem(seed=1)
    problem = adam.AdamProblem(mu, s, torch.zeros(mu.shape[-1]))
    pi = torch.tensor([0.2, 0.5, 0.3])
    u = problem.update(pi, torch.tensor(0.0))
    m = torch.einsum("d,pdn->pn", pi, mu)
    torch.testing.assert_close(u, torch.sign(m).mean(0), atol=1e-4, rtol=0)


def _adam_finetune(model, framing, texts, seed, steps=15, lr=3e-3, batch=8):
    """torch.optim.Adam on shuffled batches of `texts`, input embeddings frozen (as the demo)."""
    import tiny

    model.get_input_embeddings().weight.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    return tiny.train(model, framing, texts, opt, steps, batch, seed)


COUNTS = {"sport": 24, "money": 12, "music": 4}


@pytest.mark.parametrize("seed", [0, 1])
def test_adam_beats_the_linear_fit_on_a_real_adam_finetune(tmp_path, seed):
    """A tiny Llama trained by Adam on 60 / 30 / 10 % of the corpus' own documents (batch 8);
    the corpus adds 12 unseen documents per topic. Measured on seeds 0-2 (2 kept for time): Adam
    MAE 0.03 / 0.06 / 0.02, NNLS 0.09 / 0.15 / 0.22."""
    import tiny

    import weights2data as w2d
    from weights2data.config import ModelConfig
    from weights2data.framings import make_framing

    model, tok = tiny.llama_lm(seed)
    base = tiny.save(model, tok, tmp_path / "base")
    pool = tiny.corpus(200, seed=3 + seed)
    by_topic = {t: [r for r in pool if r["topic"] == t] for t in COUNTS}
    train = [r for t, n in COUNTS.items() for r in by_topic[t][:n]]
    unseen = [r for t in COUNTS for r in by_topic[t][40:52]]
    framing = make_framing("lm", tok, 32, ModelConfig(base, base))
    _adam_finetune(model, framing, [r["text"] for r in train], seed)
    ft = tiny.save(model, tok, tmp_path / "ft")
    corpus = tiny.write_jsonl(train + unseen, tmp_path / "corpus.jsonl")
    res = w2d.mixture(base=base, finetuned=ft, corpus=str(corpus), domain_column="topic",
                      max_length=32, bootstrap=0, progress=False, adam_batch=8)
    truth = {t: n / sum(COUNTS.values()) for t, n in COUNTS.items()}
    mae = {m: np.mean([abs(res.proportions(m)[t] - p) for t, p in truth.items()])
           for m in ("adam", "gradient")}
    assert mae["adam"] < 0.08 and mae["adam"] < mae["gradient"] - 0.03, mae
    assert res.estimates["adam"].extra["cosine"] > 0.9
    assert res.moments is not None and res.moments.coordinates == res.moments.total
