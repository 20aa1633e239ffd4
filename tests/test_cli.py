"""`weights2data select` end to end on tiny models, and its one-line errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import tiny
import torch

from weights2data.cli import main
from weights2data.config import STRATEGIES, ModelConfig
from weights2data.evaluation import Recipe, train
from weights2data.framings import make_framing


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory):
    """A tiny BERT classifier really fine-tuned on labelled topic documents."""
    d = tmp_path_factory.mktemp("bert")
    model, tok = tiny.bert_classifier()
    base = tiny.save(model, tok, d / "base")
    rows = tiny.corpus(60)
    framing = make_framing("classify-head", tok, 32, ModelConfig(base, base))
    train(model, framing, [r["text"] for r in rows], [r["label"] for r in rows],
          Recipe(steps=60, lr=1e-2, batch_size=8), progress=False)
    ft = tiny.save(model, tok, d / "ft")
    corpus = tiny.write_jsonl(tiny.corpus(45, seed=7), d / "corpus.jsonl")
    return d, base, ft, str(corpus)


def _select(base, ft, corpus, out, *extra):
    return main(["select", "--base", base, "--finetuned", ft, "--corpus", corpus, "--out", str(out),
                 "--quiet", *extra])


def test_select_end_to_end_writes_every_output(bert_run, capsys):
    d, base, ft, corpus = bert_run
    out = d / "run"
    assert _select(base, ft, corpus, out, "--k", "9", "--strategy", *STRATEGIES) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["task"] == "classify-head"
    assert manifest["head_init"] == "base" and manifest["alphas"] == [0, 1 / 3, 2 / 3]
    assert manifest["config"]["selection"]["k"] == 9
    assert {"load checkpoints", "autolabel", "gradients", "select:select"} <= set(manifest["timings_s"])
    assert "torch" in manifest["versions"]
    for name in STRATEGIES:
        rows = [json.loads(line) for line in open(out / f"selected-{name}.jsonl")]
        assert [r["rank"] for r in rows] == list(range(9))
        assert len({r["index"] for r in rows}) == 9
        assert all(r["autolabel"] in tiny.LABELS and r["text"] for r in rows)
    scores = pq.read_table(out / "scores.parquet").to_pandas()
    assert len(scores) == 45 and (scores["rank_select"] >= 0).sum() == 9
    curve = json.loads((out / "curves.json").read_text())["select"]
    assert len(curve) == 9 and max(curve) > 0
    # the fine-tune learnt (some of) the topics: its autolabels beat chance (1/3)
    topics = [json.loads(line)["label"] for line in open(corpus)]
    assert (torch.tensor(topics) == torch.tensor(scores["autolabel"].values)).float().mean() > 0.5
    assert "selected-select.jsonl" in capsys.readouterr().out


def test_same_seed_same_selection(bert_run):
    d, base, ft, corpus = bert_run
    picks = []
    for run in ("a", "b"):
        assert _select(base, ft, corpus, d / run, "--k", "7", "--strategy", "select", "random") == 0
        picks.append([(d / run / f"selected-{s}.jsonl").read_text() for s in ("select", "random")])
    assert picks[0] == picks[1]


def test_confidence_quantile_drops_the_least_sure_of_each_class(bert_run, capsys):
    d, base, ft, corpus = bert_run
    out = d / "confident"
    assert _select(base, ft, corpus, out, "--k", "5", "--confidence-quantile", "0.5",
                   "--strategy", "select", "topk-balanced", "random") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    scores = pq.read_table(out / "scores.parquet").to_pandas()
    sure = set()
    for _, group in scores.groupby("autolabel"):  # the surer half of every autolabel, rounded up
        sure |= set(group.sort_values("loss_finetuned", kind="stable")["index"]
                    [: -(-len(group) // 2)])
    assert manifest["eligible_documents"] == len(sure) < 45
    assert {scores["autolabel"][i] for i in sure} == set(scores["autolabel"])  # no class removed
    assert "were eligible" in capsys.readouterr().out
    for name in ("select", "topk-balanced", "random"):
        rows = [json.loads(line)["index"] for line in open(out / f"selected-{name}.jsonl")]
        assert len(rows) == 5 and set(rows) <= sure, name
    _expect_error(capsys, _select(base, ft, corpus, d / "none", "--k", "44",
                                  "--confidence-quantile", "0.5"), "eligible")
    _expect_error(capsys, _select(base, ft, corpus, d / "bad", "--k", "5",
                                  "--confidence-quantile", "1.5"), "share")


def test_confident_rows_never_empties_a_class():
    from weights2data.selection import confident_rows

    labels = np.array([0, 0, 0, 0, 1, 2, 2])
    loss = -np.log([0.9, 0.2, 0.95, 0.5, 0.1, 0.3, 0.3])  # θf's probabilities of the labels
    # class 0 keeps its top 2 of 4, class 1 its only row (however unsure), class 2 the lower tied row
    assert confident_rows(loss, labels, 0.5).tolist() == [True, False, True, False, True, True, False]
    assert confident_rows(loss, labels, 0.0).all()
    # a single threshold would have removed class 1 and 2 entirely
    assert set(labels[confident_rows(loss, labels, 0.9)]) == {0, 1, 2}


def test_confident_rows_ranks_the_surest_by_loss_not_rounded_probability():
    from weights2data.selection import confident_rows

    # Two near-certain documents: distinct float32 losses whose float32 probabilities tie.
    loss = torch.tensor([1.00001e-4, 1.0e-4], dtype=torch.float32)
    assert loss[0] != loss[1] and torch.exp(-loss)[0] == torch.exp(-loss)[1]
    assert confident_rows(loss.numpy(), np.array([0, 0]), 0.5).tolist() == [False, True]


def test_classify_tokens_and_lm_framings_run(tmp_path):
    model, tok = tiny.gpt2_lm()
    base = tiny.save(model, tok, tmp_path / "base")
    ft = tiny.save(tiny.perturbed(model), tok, tmp_path / "ft")
    corpus = str(tiny.write_jsonl(tiny.corpus(20), tmp_path / "c.jsonl"))
    assert _select(base, ft, corpus, tmp_path / "ct", "--k", "5", "--labels", *tiny.LABELS,
                   "--strategy", "select", "topk-balanced") == 0
    assert json.loads((tmp_path / "ct/manifest.json").read_text())["task"] == "classify-tokens"
    assert _select(base, ft, corpus, tmp_path / "lm", "--k", "5", "--exact-max", "1000",
                   "--projection-dim", "64", "--strategy", "select", "loss-min") == 0
    manifest = json.loads((tmp_path / "lm/manifest.json").read_text())
    assert manifest["task"] == "lm" and manifest["projection"]["kind"] == "kronecker"


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "weights2data", "select", "--help"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "--checkpoints" in out.stdout


def _expect_error(capsys, code, match):
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("weights2data: error:") and "\n" not in err
    assert match in err, err


def test_bad_inputs_give_one_line_errors(bert_run, tmp_path, capsys):
    d, base, ft, corpus = bert_run
    out = tmp_path / "out"
    run = lambda corpus_, *extra: _select(base, ft, corpus_, out, *extra)  # noqa: E731

    _expect_error(capsys, run(corpus, "--k", "999"), "larger than the corpus (45 documents)")
    _expect_error(capsys, run(corpus, "--k", "3", "--text-column", "body"), "no column 'body'")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _expect_error(capsys, run(str(empty), "--k", "3"), "could not be read")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": oops\n')
    _expect_error(capsys, run(str(broken), "--k", "1"), "could not be read")
    blank = tiny.write_jsonl([{"text": "the team won"}, {"text": "   "}], tmp_path / "blank.jsonl")
    _expect_error(capsys, run(str(blank), "--k", "1"), "row 1")
    nothing = tiny.write_jsonl([{"text": "the team won"}, {"text": "\u200b"}], tmp_path / "zw.jsonl")
    _expect_error(capsys, run(str(nothing), "--k", "1"), "row 1 tokenises to")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"text": "fine"}\n{"text": "caf\u00e9 au lait"}\n'.encode("latin-1"))
    _expect_error(capsys, run(str(latin), "--k", "1"), f"{latin} is not UTF-8 text: line 2")
    _expect_error(capsys, _select(base, base, corpus, out, "--k", "3"), "same model")
    _expect_error(capsys, run(corpus, "--k", "3", "--layers", "bert.*.nothing"),
                  "matches no linear module; the model has: bert.encoder.layer.*.attention")
    _expect_error(capsys, run(corpus, "--k", "3", "--task", "lm"), "has no parameter")
    assert not out.exists()

    assert run(corpus, "--k", "3") == 0
    _expect_error(capsys, run(corpus, "--k", "3"), "already holds a finished run")
    assert run(corpus, "--k", "4", "--overwrite") == 0
    assert len((out / "selected-select.jsonl").read_text().splitlines()) == 4


def test_a_layer_that_did_not_change_is_named(tmp_path, capsys):
    model, tok = tiny.bert_classifier()
    base = tiny.save(model, tok, tmp_path / "base")
    with torch.no_grad():  # a fine-tune that left the head alone
        model.bert.encoder.layer[1].output.dense.weight.add_(0.1)
    ft = tiny.save(model, tok, tmp_path / "ft")
    corpus = str(tiny.write_jsonl(tiny.corpus(8), tmp_path / "c.jsonl"))
    code = _select(base, ft, corpus, tmp_path / "o", "--k", "2", "--layers", "last")
    _expect_error(capsys, code, "the last layer classifier is identical in both checkpoints")
    code = _select(base, ft, corpus, tmp_path / "o", "--k", "2", "--layers", "bert.encoder.layer.?.output.dense")
    _expect_error(capsys, code, "layer bert.encoder.layer.0.output.dense is identical")
    assert _select(base, ft, corpus, tmp_path / "o", "--k", "2") == 0  # auto: the layer that changed
    manifest = json.loads((tmp_path / "o/manifest.json").read_text())
    assert [la["name"] for la in manifest["layers"]] == ["bert.encoder.layer.1.output.dense"]


def test_max_length_beyond_the_model_is_clamped_and_recorded(tmp_path):
    model, tok = tiny.gpt2_lm()  # 64 positions
    base = tiny.save(model, tok, tmp_path / "base")
    ft = tiny.save(tiny.perturbed(model), tok, tmp_path / "ft")
    long = [{"text": " ".join([r["text"] for r in tiny.corpus(12)])}] * 3
    corpus = str(tiny.write_jsonl(long + tiny.corpus(5), tmp_path / "c.jsonl"))
    assert _select(base, ft, corpus, tmp_path / "o", "--k", "2", "--max-length", "128",
                   "--exact-max", "100", "--projection-dim", "16") == 0
    assert json.loads((tmp_path / "o/manifest.json").read_text())["max_length"] == 64


def test_label_words_must_be_single_tokens(tmp_path, capsys):
    model, tok = tiny.gpt2_lm()
    base = tiny.save(model, tok, tmp_path / "base")
    ft = tiny.save(tiny.perturbed(model), tok, tmp_path / "ft")
    corpus = str(tiny.write_jsonl(tiny.corpus(6), tmp_path / "c.jsonl"))
    code = _select(base, ft, corpus, tmp_path / "o", "--k", "2", "--labels", "sport", "xylophonist")
    _expect_error(capsys, code, "label word 'xylophonist' is not a single token")



def test_select_runs_without_pot_or_matplotlib(bert_run, tmp_path):
    """Libraries of evaluation and reports, broken or missing, must not stop a selection."""
    _, base, ft, corpus = bert_run
    broken = tmp_path / "broken"
    for name in ("ot", "matplotlib"):
        (broken / name).mkdir(parents=True)
        (broken / name / "__init__.py").write_text(f"raise ImportError('{name} is broken here')\n")
    env = {**os.environ, "PYTHONPATH": str(broken)}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "weights2data", *args], capture_output=True,
                              text=True, timeout=300, env=env)

    assert run("select", "--help").returncode == 0
    done = run("select", "--base", base, "--finetuned", ft, "--corpus", corpus, "--k", "5",
               "--out", str(tmp_path / "out"), "--quiet", "--strategy", "select", "random")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "selected-select.jsonl").is_file()
