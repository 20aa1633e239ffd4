"""The demo with a LoRA expert (`demo --lora`) and the layers variant of the full fine-tune."""

import json

import tiny
import torch
from test_demo import _hidden, _writer

from weights2data.checkpoints import load_pair
from weights2data.config import ModelConfig
from weights2data.demo import report
from weights2data.demo.prepare import model_dirs, prepare
from weights2data.demo.run import run_demo
from weights2data.demo.sizes import CLASSIFY_STRATEGIES, select_variants, sizes_for
from weights2data.gradients.layers import linear_modules

ADAPTED = [f"bert.encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")]


def test_lora_demo_smoke(tmp_path):
    """The expert is a LoRA adapter (head frozen), select takes the adapter's layers with
    default options, and every row is retrained with the same adapter recipe."""
    sizes = sizes_for("bbc", "smoke", lora=True)
    sizes.ks = [12]  # one K: the rows' structure, at half the smoke grid's cost
    hidden = _hidden("classify-head")
    res = run_demo(hidden, _writer(tiny.bert_classifier), sizes, tmp_path, CLASSIFY_STRATEGIES,
                   progress=False, log=lambda _: None)
    assert set(res["strategies"]) == set(CLASSIFY_STRATEGIES)
    for per_k in [*res["strategies"].values(), res["oracle"]]:
        for e in per_k.values():
            assert e["n"] == len(e["val"]["values"]) == len(e["train_loss"]["values"]) == sizes.seeds
            assert e["recipe"]["lora"] == {"r": 8, "alpha": 16, "targets": ["query", "value"]}
    assert res["sizes"]["lora"]["r"] == 8
    main = res["select"]["main"]
    assert main["layers"] == ADAPTED
    manifest = json.loads(open(f"{main['folder']}/manifest.json").read())
    assert [la["name"] for la in manifest["layers"]] == ADAPTED
    assert all(la["target"] == "low-rank" for la in manifest["layers"])
    assert main["timings_s"]["store"] > 0

    base_dir, expert_dir = model_dirs(hidden, sizes, tmp_path)
    config = json.loads((expert_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and not config.get("modules_to_save")
    assert sorted(config["target_modules"]) == ["query", "value"]
    pair = load_pair(ModelConfig(str(base_dir), str(expert_dir)))
    assert sorted(pair.adapter) == ADAPTED
    assert torch.equal(pair.base.classifier.weight, pair.finetuned.classifier.weight)
    # LoRA and full experts never share a cache folder.
    full = sizes_for("bbc", "smoke")
    assert model_dirs(hidden, full, tmp_path)[1] != expert_dir
    assert model_dirs(hidden, full, tmp_path)[0] == base_dir
    assert "LoRA: r = 8 on query/value, head frozen" in report.table(res)


def test_layers_changed_variant_takes_every_changed_module(tmp_path):
    """On a full fine-tune the main run takes the head; `select layers=changed` every linear
    module whose weights differ between θ0 and θf."""
    variants = select_variants(3)
    assert variants["select layers=changed"] == {"layers": ["changed"]}
    assert "select layers=changed" not in select_variants(3, lora=True)
    assert "select head init zeros" not in select_variants(3, lora=True)
    sizes = sizes_for("bbc", "smoke")
    sizes.variants = {"select layers=changed": variants["select layers=changed"]}
    hidden = _hidden("classify-head")
    p = prepare(hidden, _writer(tiny.bert_classifier), sizes, tmp_path, ["select"],
                progress=False, log=lambda _: None)
    assert [la["name"] for la in p.main.manifest["layers"]] == ["classifier"]
    pair = load_pair(ModelConfig(str(p.base_dir), str(p.expert_dir)))
    base, ft = linear_modules(pair.base), linear_modules(pair.finetuned)
    changed = [n for n in base if not torch.equal(base[n].weight, ft[n].weight)]
    assert len(changed) > 10 and "classifier" in changed
    got = [la["name"] for la in p.runs["select layers=changed"].manifest["layers"]]
    assert got == changed
    assert p.runs["select layers=changed"].manifest["timings_s"]["gradients"] > 0
