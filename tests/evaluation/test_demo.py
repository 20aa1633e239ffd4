import json

import numpy as np
import pytest
import tiny

from weights2data.demo import report
from weights2data.demo.recipe_check import compare
from weights2data.demo.run import Hidden, run_demo
from weights2data.demo.sizes import CLASSIFY_STRATEGIES, LM_STRATEGIES, sizes_for
from weights2data.evaluation import protocol
from weights2data.evaluation.evaluate import load_run
from weights2data.evaluation.protocol import load_setup, redraw


def _hidden(task: str) -> Hidden:
    rows = tiny.corpus(90)
    keep = ("text", "label") if task != "lm" else ("text",)
    pick = lambda rs: [{k: r[k] for k in keep} for r in rs]  # noqa: E731
    seed = [{"text": r["text"], "source": f"src{i % 3}"} for i, r in enumerate(tiny.corpus(60, seed=3))]
    return Hidden(task, pick(rows[:30]), pick(rows[30:42]), pick(rows[42:57]), seed,
                  tiny.LABELS if task != "lm" else None, "tiny")


def _writer(build):
    def write(folder):
        model, tok = build()
        tiny.save(model, tok, folder)
    return write


def test_classify_demo_runs_the_protocol_and_caches(tmp_path):
    """Every row of the demo is the evaluation protocol at the recipe for its K: the values
    are those protocol.evaluate gives on the same documents; random and the oracle are new
    draws per seed; a second run only reads the cache."""
    sizes = sizes_for("bbc", "smoke")
    sizes.leak = 0.2
    sizes.variants = {"select head init zeros": {"head_init": "zeros"},
                      "select surest 50% per class": {"confidence_quantile": 0.5}}
    sizes.recipe_check = True
    logs: list[str] = []
    first = run_demo(_hidden("classify-head"), _writer(tiny.bert_classifier), sizes, tmp_path,
                     CLASSIFY_STRATEGIES, progress=False, log=logs.append)
    names = {*CLASSIFY_STRATEGIES, *sizes.variants}
    assert set(first["strategies"]) == names
    schedule = sizes.schedule()
    assert {k: r["steps"] for k, r in first["recipes"].items()} == {"6": 20, "12": 20}
    assert schedule.steps(100) == 25  # above the floor the budget grows with K
    k = "12"
    for per_k in [*first["strategies"].values(), first["oracle"]]:
        e = per_k[k]
        assert e["n"] == len(e["values"]) == len(e["val"]["values"]) == sizes.seeds
        assert len(e["train_loss"]["values"]) == sizes.seeds and e["recipe"]["steps"] == 20
    assert first["documents"] == {"seed_corpus": 66, "leaked": 6, "train": 30, "val": 12, "test": 15}
    assert first["select"]["select head init zeros"]["head_init"] == "zeros"
    # The quantile variant keeps the surer half of every autolabel (rounded up), no class lost.
    eligible = first["select"]["select surest 50% per class"]["eligible_documents"]
    assert 33 <= eligible <= 33 + len(tiny.LABELS)
    assert first["expert"]["test"] > first["base"]["test"] + 20

    # Recompute three rows with the protocol directly: same numbers.
    main = load_run(first["select"]["main"]["folder"])
    cache = tmp_path / "check"
    setup = load_setup(main.config(base=main.manifest["config"]["model"]["base"]))
    hidden = _hidden("classify-head")
    sets = protocol.EvalSets([r["text"] for r in hidden.test], [r["label"] for r in hidden.test],
                             [r["text"] for r in hidden.val], [r["label"] for r in hidden.val])
    corpus = [json.loads(line) for line in open(main.folder.parent / "corpus.jsonl")]
    autolabels = {r["index"]: tiny.LABELS.index(r["autolabel"]) for r in main.selections["select"]}
    idx = [r["index"] for r in main.selections["select"][:12]]
    row = protocol.evaluate(setup, protocol.fixed([corpus[i]["text"] for i in idx],
                                                  [autolabels[i] for i in idx]),
                            12, schedule, [0, 1], sets, cache=cache)
    assert row["values"] == first["strategies"]["select"][k]["values"]
    train = hidden.train
    for seed in (0, 1):
        pick = redraw(len(train), 12, seed)
        one = protocol.evaluate(setup, protocol.fixed([train[i]["text"] for i in pick],
                                                      [train[i]["label"] for i in pick]),
                                12, schedule, [seed], sets)
        assert one["values"] == [first["oracle"][k]["values"][seed]]
    assert redraw(66, 12, 0) != redraw(66, 12, 1)  # random: a new draw per seed
    assert first["first_picks"]["random"][0]["index"] == redraw(66, 12, 0)[0]
    assert first["first_picks"]["select"][0]["index"] == main.selections["select"][0]["index"]
    assert len(first["curves"]["select"]) == 12 and "select head init zeros" in first["curves"]

    check = first["recipe_check"]
    assert check["k"] == 6 and set(check["budgets"]) == {"0.5", "1", "2"}
    assert [check["budgets"][f]["steps"] for f in ("0.5", "1", "2")] == [10, 20, 40]
    # The strategies and the oracle (not the variants), the recipe's values at ×1.
    assert check["budgets"]["1"]["mean"] == {n: first["strategies"][n]["6"]["mean"]
                                             for n in CLASSIFY_STRATEGIES} | {
        "oracle": first["oracle"]["6"]["mean"]}

    logs.clear()
    second = run_demo(_hidden("classify-head"), _writer(tiny.bert_classifier), sizes, tmp_path,
                      CLASSIFY_STRATEGIES, progress=False, log=logs.append)
    assert all(line.startswith("[cached]") for line in logs), logs
    assert second["strategies"] == first["strategies"] and second["oracle"] == first["oracle"]

    text = report.table(second)
    assert "n = 2 seeds" in text and "loss" in text and "recipe check" in text
    report.write_html(second, tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert "<pre>" not in page and "<table class='results'>" in page
    assert page.count("data:image/png;base64,") >= 5  # bars per K, vs K, curves, sources, labels
    snippet = first["first_picks"]["select"][0]["text"]
    assert json.dumps(snippet)[1:-1].split()[0] in page  # the first pick's text is shown
    assert "min_steps" in page and "Kendall" in page
    json.dumps(second)  # results.json must serialise


def test_lm_demo_smoke(tmp_path):
    sizes = sizes_for("lm", "smoke")
    res = run_demo(_hidden("lm"), _writer(tiny.gpt2_lm), sizes, tmp_path, LM_STRATEGIES,
                   progress=False, log=lambda _: None)
    assert res["metric"] == "perplexity" and res["lower_is_better"]
    k = "12"
    # The expert and every retraining on corpus text beat θ0 on held-out text.
    assert res["expert"]["test"] < res["base"]["test"]
    for name in LM_STRATEGIES:
        assert 1 < res["strategies"][name][k]["mean"] < res["base"]["test"]
    assert res["oracle"][k]["mean"] < res["base"]["test"]
    assert "labels" not in res["strategies"]["select"][k]
    assert "conf" not in report.table(res)
    # A healed base (what demo.lm's make_base records) is reported with its held-out perplexity.
    res["base_model"] = {"layers_kept": 4, "layers_total": 30, "heal_recipe": {"steps": 300},
                         "heldout_seed_documents": 200,
                         "heldout_seed_perplexity": {"before_healing": 1.3e8, "after_healing": 402.6}}
    assert "held-out seed documents 1.3e+08 before healing, 402.6 after" in report.table(res)
    report.write_html(res, tmp_path / "report.html")
    assert "402.6 after" in (tmp_path / "report.html").read_text()


def test_recipe_check_finds_flips_and_tau():
    def row(mean, sd=0.5):
        return {"mean": mean, "sd": sd, "n": 3, "train_loss": {"mean": 0.1},
                "recipe": {"steps": 10}}

    same = {1.0: {"a": row(90), "b": row(80), "c": row(70)},
            2.0: {"a": row(91), "b": row(82), "c": row(71)}}
    out = compare(same, 100, lower_is_better=False)
    assert out["holds"] and out["kendall_tau"] == {"2": pytest.approx(1.0)}
    assert out["budgets"]["1"]["ranking"] == ["a", "b", "c"]
    flipped = {1.0: {"a": row(90), "b": row(80), "c": row(70)},
               0.5: {"a": row(60), "b": row(80.2), "c": row(70)}}
    out = compare(flipped, 100, lower_is_better=False)
    assert not out["holds"] and out["flips"] == ["a > b at the recipe's budget, reversed at ×0.5",
                                                 "a > c at the recipe's budget, reversed at ×0.5"]
    assert out["kendall_tau"]["0.5"] == pytest.approx(-1 / 3)
    # All equal: τ is undefined, not a number to compare.
    flat = compare({1.0: {"a": row(50), "b": row(50)}, 2.0: {"a": row(50), "b": row(50)}}, 5,
                   lower_is_better=False)
    assert flat["kendall_tau"] == {"2": None} and flat["holds"]
    # Within noise is no conclusion: nothing can flip.
    noisy = {1.0: {"a": row(90, 20), "b": row(80, 20)}, 2.0: {"a": row(80, 20), "b": row(90, 20)}}
    assert compare(noisy, 100, lower_is_better=False)["holds"]
    # Perplexity: lower is better.
    ppl = compare({1.0: {"a": row(10), "b": row(20)}}, 5, lower_is_better=True)
    assert ppl["budgets"]["1"]["ranking"] == ["a", "b"]
    assert np.isfinite(ppl["budgets"]["1"]["mean"]["a"])


def test_variants_are_relative_to_the_main_run():
    from weights2data.demo.sizes import select_variants

    for p in (1, 3, 5):
        variants = select_variants(p)
        assert p not in [v.get("checkpoints") for v in variants.values()]
        assert len([v for v in variants.values() if "checkpoints" in v]) == 2
    full = sizes_for("lm", "full")
    assert full.checkpoints not in [v.get("checkpoints") for v in full.variants.values()]
    assert not any("confidence_quantile" in v for v in full.variants.values())


def test_demo_cli_refuses_bad_sizes(capsys):
    from weights2data.cli import main

    assert main(["demo", "--leak", "1.5", "--quiet"]) == 2
    assert "--leak is a fraction" in capsys.readouterr().err
    assert main(["demo", "--seeds", "0", "--quiet"]) == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err
    assert main(["demo", "--lora", "--task", "lm", "--quiet"]) == 2
    assert "--lora is for the classification tasks" in capsys.readouterr().err


def test_a_stage_another_live_process_holds_is_waited_for_not_computed_again(tmp_path):
    """Two demo processes on one --cache: the second waits for the first's select run (or θ0,
    or θf) instead of computing it a second time; a lock left by a dead process is taken over."""
    import os
    import subprocess
    import sys
    import threading

    from weights2data.demo.prepare import Stages

    result = tmp_path / "select-k100"
    calls, logs = [], []
    lock = tmp_path / f".{result.name}.lock"

    def finish():  # what the holder does: write its result, then let go of the lock
        result.mkdir()
        lock.unlink()

    lock.write_text(str(os.getpid()))  # a live holder
    finisher = threading.Timer(0.5, finish)
    finisher.start()
    stages = Stages(logs.append)
    stages.run("select", result, result.exists, lambda: calls.append("work"))
    finisher.join()
    assert calls == [] and stages.cached == ["select"]
    assert logs[0].startswith("[wait] select")

    other = tmp_path / "expert"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".{other.name}.lock").write_text(str(dead.pid))
    stages.run("expert", other, other.exists, lambda: other.mkdir())
    assert other.is_dir() and "expert" in stages.seconds
    assert not list(tmp_path.glob(".*.lock"))
