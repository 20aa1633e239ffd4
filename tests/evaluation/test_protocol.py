"""The evaluation protocol: the recipe rule, the redraw policy, per-seed results that are
exactly what training and measuring by hand gives, and a cache keyed by what was trained."""

import copy
import math
import statistics

import pytest
import tiny
import torch

from weights2data.checkpoints import CheckpointPair
from weights2data.config import ModelConfig
from weights2data.evaluation.protocol import (
    EvalSets,
    Setup,
    evaluate,
    fixed,
    measure,
    redraw,
    redrawn,
)
from weights2data.evaluation.train import Recipe, Schedule, TrainLog, train
from weights2data.framings import make_framing
from weights2data.selection import run_strategy


@pytest.fixture(scope="module")
def setup():
    model, tok = tiny.bert_classifier()
    framing = make_framing("classify-head", tok, 32, ModelConfig("b", "f"))
    pair = CheckpointPair(model, model, tok, "classify-head", torch.device("cpu"))
    return Setup(pair, framing, "base", key="tiny")


def _sets():
    test = tiny.corpus(15, seed=9)
    val = tiny.corpus(9, seed=4)
    return EvalSets([r["text"] for r in test], [r["label"] for r in test],
                    [r["text"] for r in val], [r["label"] for r in val])


def test_schedule_trains_at_every_k():
    s = Schedule(min_steps=80, epochs=3, batch_size=16)
    assert [s.steps(k) for k in (1, 100, 426, 427, 1000)] == [80, 80, 80, 81, 188]
    r = s.recipe(500, seed=2)
    assert (r.steps, r.seed, r.lr, r.batch_size) == (94, 2, s.lr, 16)
    half, double = s.scaled(0.5), s.scaled(2)
    assert (half.steps(100), double.steps(100)) == (40, 160)
    assert (half.steps(1000), double.steps(1000)) == (94, 375)


def test_final_loss_is_the_mean_of_the_last_tenth():
    assert TrainLog([5.0] * 18 + [1.0, 3.0]).final_loss == 2.0
    assert TrainLog([4.0, 2.0]).final_loss == 2.0
    assert math.isnan(TrainLog().final_loss)


def test_redraw_is_selects_random_a_prefix_and_new_per_seed():
    for seed in (0, 3):
        assert redraw(50, 10, seed) == run_strategy("random", 10, n=50, seed=seed).indices
    assert redraw(50, 10, 1)[:4] == redraw(50, 4, 1)
    assert redraw(50, 10, 0) != redraw(50, 10, 1)
    texts = [f"doc {i}" for i in range(30)]
    draw = redrawn(texts, list(range(30)), 5, rows=range(10, 30))
    (a, la), (b, _) = draw(0), draw(1)
    assert a != b and all(int(t.split()[1]) >= 10 for t in a + b)
    assert la == [int(t.split()[1]) for t in a]  # labels travel with their documents


def test_per_seed_values_are_what_training_by_hand_gives(setup, tmp_path):
    rows = tiny.corpus(24, seed=2)
    texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
    sets = _sets()
    schedule = Schedule(min_steps=30, epochs=1, lr=1e-2, batch_size=8)
    out = evaluate(setup, fixed(texts, labels), 24, schedule, [0, 1], sets, cache=tmp_path)
    for i, seed in enumerate((0, 1)):
        model = copy.deepcopy(setup.pair.base)
        log = train(model, setup.framing, texts, labels, Recipe(steps=30, lr=1e-2, batch_size=8,
                                                                seed=seed), progress=False)
        assert out["values"][i] == measure(setup, model, sets.test_texts, sets.test_labels)
        assert out["val"]["values"][i] == measure(setup, model, sets.val_texts, sets.val_labels)
        assert out["train_loss"]["values"][i] == log.final_loss < log.losses[0] - 0.2
    assert out["mean"] == statistics.fmean(out["values"]) and out["n"] == 2
    assert out["sd"] == statistics.stdev(out["values"]) and out["recipe"]["steps"] == 30
    # Training on topic words teaches the topics: the retrained model beats θ0.
    assert out["mean"] > measure(setup, setup.pair.base, sets.test_texts, sets.test_labels) + 20

    # Cached: the same call trains nothing; one changed document trains both seeds again.
    assert len(list(tmp_path.glob("*.json"))) == 2
    assert evaluate(setup, fixed(texts, labels), 24, schedule, [0, 1], sets, cache=tmp_path) == out
    assert len(list(tmp_path.glob("*.json"))) == 2
    evaluate(setup, fixed(texts[:-1] + ["music album"], labels), 24, schedule, [0, 1], sets,
             cache=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 4


def test_random_rows_are_redrawn_per_seed(setup):
    rows = tiny.corpus(40, seed=5)
    texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
    sets = _sets()
    schedule = Schedule(min_steps=4, epochs=1, lr=3e-3, batch_size=8)
    out = evaluate(setup, redrawn(texts, labels, 8), 8, schedule, [0, 1], sets)
    for i, seed in enumerate((0, 1)):  # seed s trains on redraw(N, K, s), nothing else
        idx = redraw(40, 8, seed)
        again = evaluate(setup, fixed([texts[j] for j in idx], [labels[j] for j in idx]), 8,
                         schedule, [seed], sets)
        assert again["values"] == [out["values"][i]]


def test_processes_sharing_a_cache_split_the_seeds(setup, tmp_path):
    """A seed locked by a live process is left to it (wait=False returns None and trains
    nothing for it); a lock left by a dead process is taken over."""
    import subprocess
    import sys

    rows = tiny.corpus(16, seed=6)
    texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
    sets, schedule = _sets(), Schedule(min_steps=3, epochs=1, lr=1e-2, batch_size=8)
    args = (setup, fixed(texts, labels), 16, schedule, [0, 1], sets)
    evaluate(*args, cache=tmp_path / "probe")  # learn the result file names
    names = sorted(p.name for p in (tmp_path / "probe").glob("*.json"))
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        cache = tmp_path / "shared"
        cache.mkdir()
        for name in names:
            (cache / f".{name}.lock").write_text(str(live.pid))
        assert evaluate(*args, cache=cache, wait=False) is None
        assert not list(cache.glob("*.json"))  # nothing trained: both seeds are held
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        (cache / f".{names[0]}.lock").write_text(str(dead.pid))
        assert evaluate(*args, cache=cache, wait=False) is None
        assert [p.name for p in cache.glob("*.json")] == [names[0]]  # the dead one's, taken over
    finally:
        live.kill()
        live.wait()
    (cache / f".{names[1]}.lock").unlink()
    out = evaluate(*args, cache=cache, wait=False)
    assert out == evaluate(*args, cache=tmp_path / "probe") and not list(cache.glob(".*.lock"))
