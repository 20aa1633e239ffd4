"""The mixture demo's bookkeeping (the fine-tunes themselves run in `demo --mixture`)."""

import numpy as np
import pytest

from weights2data.proportions import demo


def test_drawn_mixtures_are_seeded_and_sum_to_n():
    a = demo.draw_mixture(np.random.default_rng([3, 1]), 64, 1.0)
    b = demo.draw_mixture(np.random.default_rng([3, 1]), 64, 1.0)
    assert a.sum() == 64 and (a >= 0).all() and (a == b).all()


def _run(seed, truth, select_order):
    sources = [s for s in demo.SOURCES for _ in range(4)]  # 4 documents per source
    return {"seed": seed, "truth": truth, "sources": sources,
            "gradient": {f"debias={d}": {"proportions": dict(truth)} for d in (True, False)},
            "adam": {v: {"proportions": dict(truth)} for v in demo.ADAM_VARIANTS},
            "picks": {"select": select_order, "topk": list(range(16))},
            "loss": {s: 0.25 for s in demo.SOURCES}}


def test_knobs_are_applied_when_summarising():
    truth = {"wikipedia": 0.5, "news": 0.5, "tweets": 0.0, "bbc": 0.0}
    runs = [_run(s, truth, [0, 4, 1, 5, 8, 12, 2, 3]) for s in (0, 1)]
    sizes = demo.MixtureSizes(k_fraction=0.25)  # K = 4: two wikipedia, two news picks
    scored = demo.scored(runs, sizes)
    assert scored[0]["estimates"]["select"] == pytest.approx(truth)
    assert scored[0]["mae"]["gradient"] == 0 and scored[0]["mae"]["uniform"] == 0.25
    sizes.k_fraction = 0.5  # K = 8 adds one tweets and one bbc pick
    assert demo.scored(runs, sizes)[0]["mae"]["select"] == pytest.approx(0.125)
    summary = demo.summarise(scored)
    assert summary["topk"]["mean"] == pytest.approx(0.25) and summary["topk"]["sd"] == 0
    assert "WARP, published (BERT)" in demo.table(summary, 2, 1)
