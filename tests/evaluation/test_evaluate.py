import copy
import json
import math

import pytest
import tiny

from weights2data import select
from weights2data.cli import main
from weights2data.config import ModelConfig
from weights2data.evaluation import Recipe, protocol, train
from weights2data.evaluation.evaluate import load_run
from weights2data.evaluation.protocol import load_setup, redraw
from weights2data.evaluation.train import Schedule
from weights2data.framings import make_framing


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny base, an 'expert' trained on topic labels, and a finished select run."""
    tmp = tmp_path_factory.mktemp("eval")
    base, tok = tiny.bert_classifier()
    rows = tiny.corpus(60)
    train_rows, test_rows, seed_rows = rows[:24], rows[24:36], tiny.corpus(45, seed=5)
    expert = copy.deepcopy(base)
    framing = make_framing("classify-head", tok, 32, ModelConfig("b", "f"))
    train(expert, framing, [r["text"] for r in train_rows], [r["label"] for r in train_rows],
          Recipe(steps=60, lr=1e-2, batch_size=8), progress=False)
    paths = {
        "base": tiny.save(base, tok, tmp / "base"),
        "expert": tiny.save(expert, tok, tmp / "expert"),
        "corpus": tiny.write_jsonl([{**r, "source": f"s{i % 2}", "leaked": i < 5}
                                    for i, r in enumerate(seed_rows)], tmp / "corpus.jsonl"),
        # Labels by name in the test set, by index in the true data: both must work.
        "test": tiny.write_jsonl([{"text": r["text"], "label": tiny.LABELS[r["label"]]}
                                  for r in test_rows], tmp / "test.jsonl"),
        "val": tiny.write_jsonl(tiny.corpus(9, seed=11), tmp / "val.jsonl"),
        "true": tiny.write_jsonl(train_rows, tmp / "true.jsonl"),
    }
    select(base=paths["base"], finetuned=paths["expert"], corpus=str(paths["corpus"]), k=9,
           max_length=32, strategies=["select", "random"], out=str(tmp / "run"), progress=False)
    return tmp, paths


def test_evaluate_cli_runs_the_protocol(run, capsys):
    tmp, paths = run
    rc = main(["evaluate", str(tmp / "run"), "--test", str(paths["test"]), "--val",
               str(paths["val"]), "--true-data", str(paths["true"]), "--seeds", "2",
               "--min-steps", "20", "--epochs", "1", "--lr", "1e-2", "--train-batch-size", "4",
               "--quiet"])
    assert rc == 0
    res = json.loads((tmp / "run" / "results.json").read_text())
    assert res["metric"] == "accuracy" and res["recipe"]["steps"] == 20  # max(20, ⌈1·9/4⌉)
    assert res["seeds"] == [0, 1] and res["max_length"] == 32 and res["val_documents"] == 9
    # The expert learned the topics; θ0 did not: a swapped label mapping would show here.
    assert res["expert"]["test"] >= res["base"]["test"] + 20
    assert res["expert"]["val"] >= res["base"]["val"] + 15

    r = load_run(tmp / "run")
    setup = load_setup(r.config())
    sets = protocol.EvalSets(*_read(paths["test"]), *_read(paths["val"]))
    schedule = Schedule(min_steps=20, epochs=1, lr=1e-2, batch_size=4)
    corpus = [json.loads(line)["text"] for line in open(paths["corpus"])]
    for name in ("select", "random"):
        e = res["strategies"][name]
        assert e["k"] == 9 and e["n"] == 2 and len(e["train_loss"]["values"]) == 2
        assert e["labels"] == {k: v for k, v in e["labels"].items() if k in tiny.LABELS}
        assert sum(e["labels"].values()) == pytest.approx(1.0)
        assert e["ot"] > 0
    # One protocol: each seed's value is what protocol.evaluate gives on that seed's documents,
    # and random trains on a fresh draw per seed (seed 0's is the one select wrote).
    assert [x["index"] for x in r.selections["random"]] == redraw(len(corpus), 9, 0)
    for seed in (0, 1):
        idx = redraw(len(corpus), 9, seed)
        labels = _autolabels(tmp / "run")[idx].tolist()
        again = protocol.evaluate(setup, protocol.fixed([corpus[i] for i in idx], labels), 9,
                                  schedule, [seed], sets)
        assert again["values"] == [res["strategies"]["random"]["values"][seed]]
        assert again["val"]["values"] == [res["strategies"]["random"]["val"]["values"][seed]]
    assert res["oracle"]["k"] == 9 and res["oracle"]["n"] == 2
    true = [json.loads(line) for line in open(paths["true"])]
    idx = redraw(len(true), 9, 1)
    again = protocol.evaluate(setup, protocol.fixed([true[i]["text"] for i in idx],
                                                    [true[i]["label"] for i in idx]),
                              9, schedule, [1], sets)
    assert again["values"] == [res["oracle"]["values"][1]]
    # Not a constant: the rows differ, so the equalities above compare real numbers.
    assert len({e["mean"] for e in [*res["strategies"].values(), res["oracle"]]}) > 1
    out = capsys.readouterr().out
    assert "n = 2 seed(s)" in out and "train loss" in out and "validation" in out


def _read(path):
    rows = [json.loads(line) for line in open(path)]
    return [x["text"] for x in rows], [tiny.LABELS.index(x["label"]) if isinstance(x["label"], str)
                                       else x["label"] for x in rows]


def _autolabels(run_dir):
    import pyarrow.parquet as pq

    return pq.read_table(run_dir / "scores.parquet").column("autolabel").to_numpy()


def test_retraining_is_deterministic_and_leaves_the_base_alone(run):
    tmp, paths = run
    r = load_run(tmp / "run")
    setup = load_setup(r.config())
    before = {k: v.clone() for k, v in setup.pair.base.state_dict().items()}
    rows = r.selections["select"]
    labels = [tiny.LABELS.index(x["autolabel"]) for x in rows]
    texts = [x["text"] for x in rows]
    sets = protocol.EvalSets(*_read(paths["test"]))
    schedule = Schedule(min_steps=4, epochs=1, lr=1e-3, batch_size=4)
    a = protocol.evaluate(setup, protocol.fixed(texts, labels), 9, schedule, [0, 1], sets)
    b = protocol.evaluate(setup, protocol.fixed(texts, labels), 9, schedule, [0, 1], sets)
    assert a == b
    after = setup.pair.base.state_dict()
    assert all((before[k] == after[k]).all() for k in before)


def test_zero_head_init_carries_into_retraining(run):
    tmp, _ = run
    setup = load_setup(load_run(tmp / "run").config(head_init="zeros"))
    head = setup.framing.last_module(setup.pair.base)
    assert setup.head_init == "zeros"
    assert not head.weight.any() and not head.bias.any()


def test_bad_inputs_are_one_line_errors(run, tmp_path, capsys):
    tmp, paths = run
    assert main(["evaluate", str(tmp_path), "--test", str(paths["test"])]) == 2
    assert "not a finished select run" in capsys.readouterr().err
    bad = tiny.write_jsonl([{"text": "a b c", "label": "opera"}], tmp_path / "bad.jsonl")
    assert main(["evaluate", str(tmp / "run"), "--test", str(bad), "--quiet"]) == 2
    assert "'opera' is not a class" in capsys.readouterr().err


def test_evaluate_lm_reports_perplexity(tmp_path):
    base, tok = tiny.gpt2_lm()
    rows = tiny.corpus(40)
    paths = {"base": tiny.save(base, tok, tmp_path / "base"),
             "ft": tiny.save(tiny.perturbed(base), tok, tmp_path / "ft"),
             "corpus": tiny.write_jsonl(rows[:30], tmp_path / "corpus.jsonl"),
             "test": tiny.write_jsonl([{"text": r["text"]} for r in rows[30:]], tmp_path / "t.jsonl")}
    select(base=paths["base"], finetuned=paths["ft"], corpus=str(paths["corpus"]), k=5,
           max_length=32, strategies=["select", "loss-min"], out=str(tmp_path / "run"),
           progress=False)
    assert main(["evaluate", str(tmp_path / "run"), "--test", str(paths["test"]), "--seeds", "1",
                 "--min-steps", "8", "--lr", "1e-2", "--quiet", "--out", str(tmp_path / "r.json")]) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["metric"] == "perplexity" and res["head_init"] is None
    assert res["recipe"]["steps"] == 8
    for e in res["strategies"].values():  # 8 steps on corpus text lower θ0's test perplexity
        assert e["mean"] < 0.8 * res["base"]["test"] and "labels" not in e
        assert e["train_loss"]["values"][0] < math.log(len(tok))
