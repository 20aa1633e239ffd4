import copy
import json

import pytest
import tiny

from weights2data import select
from weights2data.cli import main
from weights2data.config import ModelConfig
from weights2data.evaluation import Recipe, train
from weights2data.evaluation.evaluate import load_run
from weights2data.evaluation.retrain import load_setup
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
          Recipe(steps=40, lr=3e-3, batch_size=8), progress=False)
    paths = {
        "base": tiny.save(base, tok, tmp / "base"),
        "expert": tiny.save(expert, tok, tmp / "expert"),
        "corpus": tiny.write_jsonl([{**r, "source": f"s{i % 2}", "leaked": i < 5}
                                    for i, r in enumerate(seed_rows)], tmp / "corpus.jsonl"),
        # Labels by name in the test set, by index in the true data: both must work.
        "test": tiny.write_jsonl([{"text": r["text"], "label": tiny.LABELS[r["label"]]}
                                  for r in test_rows], tmp / "test.jsonl"),
        "true": tiny.write_jsonl(train_rows, tmp / "true.jsonl"),
    }
    select(base=paths["base"], finetuned=paths["expert"], corpus=str(paths["corpus"]), k=9,
           max_length=32, strategies=["select", "random"], out=str(tmp / "run"), progress=False)
    return tmp, paths


def test_evaluate_cli_writes_results(run, capsys):
    tmp, paths = run
    rc = main(["evaluate", str(tmp / "run"), "--test", str(paths["test"]), "--true-data",
               str(paths["true"]), "--seeds", "2", "--steps", "6", "--lr", "1e-3",
               "--train-batch-size", "4", "--quiet"])
    assert rc == 0
    res = json.loads((tmp / "run" / "results.json").read_text())
    assert res["metric"] == "accuracy" and res["recipe"]["steps"] == 6
    assert res["seeds"] == [0, 1] and res["max_length"] == 32
    assert 0 <= res["base"] <= 100 and 0 <= res["expert"] <= 100
    for name in ("select", "random"):
        e = res["strategies"][name]
        assert len(e["values"]) == 2 and e["k"] == 9
        assert e["ot"] >= 0
        assert sum(e["labels"].values()) == pytest.approx(1.0)
        assert set(e["labels"]) == set(tiny.LABELS)
        assert set(e["sources"]) <= {"s0", "s1"}
        assert 0 <= e["leakage"]["precision"] <= 1
    assert res["oracle"]["k"] == 9 and len(res["oracle"]["values"]) == 2
    assert "expert" in capsys.readouterr().out


def test_retraining_is_deterministic_and_leaves_the_base_alone(run):
    tmp, paths = run
    r = load_run(tmp / "run")
    setup = load_setup(r.config())
    before = {k: v.clone() for k, v in setup.pair.base.state_dict().items()}
    from weights2data.evaluation.retrain import retrain

    rows = r.selections["select"]
    labels = [tiny.LABELS.index(x["autolabel"]) for x in rows]
    texts = [x["text"] for x in rows]
    test = [x["text"] for x in tiny.corpus(12, seed=9)]
    test_labels = [x["label"] for x in tiny.corpus(12, seed=9)]
    recipe = Recipe(steps=4, lr=1e-3, batch_size=4)
    a = retrain(setup, texts, labels, recipe, [0, 1], test, test_labels)
    b = retrain(setup, texts, labels, recipe, [0, 1], test, test_labels)
    assert a["values"] == b["values"]
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
                 "--steps", "3", "--quiet", "--out", str(tmp_path / "r.json")]) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["metric"] == "perplexity" and res["head_init"] is None
    assert all(e["mean"] > 1 and "labels" not in e for e in res["strategies"].values())
