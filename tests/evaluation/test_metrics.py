import math

import numpy as np
import pytest
import tiny
import torch

from weights2data.config import ModelConfig
from weights2data.evaluation.metrics import (
    SentenceEncoder,
    accuracy,
    distribution,
    leakage,
    ot_distance,
    perplexity,
)
from weights2data.framings import make_framing


def test_emd_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(7, 5))
    assert ot_distance(x, x) == pytest.approx(0.0, abs=1e-12)


def test_emd_two_points_known_answer():
    # Pairing 0->1 and 1->3 costs (1 + 4) / 2; the crossed pairing would cost (9 + 0) / 2.
    a, b = np.array([[0.0], [1.0]]), np.array([[1.0], [3.0]])
    assert ot_distance(a, b) == pytest.approx(2.5)
    # One point against two: half its mass to each, 0.5 * 1 + 0.5 * 4.
    assert ot_distance(np.array([[0.0, 0.0]]), np.array([[1.0, 0.0], [0.0, 2.0]])) == pytest.approx(2.5)


def test_sinkhorn_beyond_the_threshold_approximates_emd():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(20, 3)), rng.normal(size=(15, 3)) + 1
    exact = ot_distance(a, b)
    approx = ot_distance(a, b, sinkhorn_above=10, reg=0.05)
    assert approx != exact
    assert approx == pytest.approx(exact, rel=0.05)


def test_leakage_on_a_planted_case():
    leaked = [3, 5, 7, 9]
    out = leakage(selected=[1, 3, 5, 8, 11], leaked=leaked)
    assert out == {"precision": pytest.approx(2 / 5), "recall": pytest.approx(2 / 4), "hits": 2}
    assert leakage([3, 5, 7, 9], leaked) == {"precision": 1.0, "recall": 1.0, "hits": 4}


def test_distribution_lists_every_class():
    d = distribution([0, 0, 2, 0], ["a", "b", "c"])
    assert d == {"a": 0.75, "b": 0.0, "c": 0.25}
    assert distribution(["news", "tweets", "news", "news"]) == {"news": 0.75, "tweets": 0.25}


def test_accuracy_matches_argmax_by_hand():
    model, tok = tiny.bert_classifier()
    rows = tiny.corpus(20)
    texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
    framing = make_framing("classify-head", tok, 32, ModelConfig("b", "f"))
    with torch.no_grad():
        logits = model(**tok(texts, padding=True, truncation=True, max_length=32,
                             return_tensors="pt")).logits
    expected = (logits.argmax(-1) == torch.tensor(labels)).float().mean().item()
    assert accuracy(framing, model, texts, labels, batch_size=7) == pytest.approx(expected)


def test_perplexity_is_token_weighted():
    model, tok = tiny.gpt2_lm()
    texts = [r["text"] for r in tiny.corpus(9)]
    framing = make_framing("lm", tok, 32, ModelConfig("b", "f"))
    nll, count = 0.0, 0
    with torch.no_grad():
        for t in texts:  # one document at a time: no padding anywhere
            ids = tok(t, truncation=True, max_length=32, return_tensors="pt")["input_ids"]
            n = ids.shape[1] - 1
            nll += model(input_ids=ids, labels=ids).loss.item() * n
            count += n
    assert perplexity(framing, model, texts, batch_size=4) == pytest.approx(math.exp(nll / count),
                                                                              rel=1e-5)


def test_sentence_encoder_is_normalised_and_order_free():
    enc = SentenceEncoder()
    texts = ["the match ended in a draw", "a short one", "shares fell sharply on monday morning"]
    e = enc(texts, batch_size=2)
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    again = enc(texts[::-1], batch_size=1)[::-1]
    assert np.allclose(e, again, atol=1e-5)
    # Paraphrase-level similarity: the sports sentence is nearer a sports sentence.
    q = enc(["the football game finished level"])[0]
    assert q @ e[0] > q @ e[2]


def test_perplexity_tokenizes_the_texts_once():
    model, tok = tiny.gpt2_lm()
    texts = [r["text"] for r in tiny.corpus(9)]
    framing = make_framing("lm", tok, 32, ModelConfig("b", "f"))
    seen = []
    tokenize = framing.tokenize
    framing.tokenize = lambda t: seen.append(len(t)) or tokenize(t)
    perplexity(framing, model, texts, batch_size=4)
    assert seen == [len(texts)]  # one call over the whole list, none per batch
