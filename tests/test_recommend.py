"""recommend: the task table leaning lower for small data, alpha/rsLoRA/scale, the LR by model width
(cited anchors, log-log interpolation, overridable) with the configurable rank exponent, memory fitting (batch, checkpointing, 4-bit, DoRA), the ladder, the
rules override, --export, and one-line errors for bad input."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import yaml

from loradial.errors import LoradialError
from loradial.advice.recommendation import recommend
from loradial.advice.rules import (DEFAULT_RULES, SOURCES, alpha_from_rule, ladder_step_config, load_rules, lr_for_width,
                                   model_width)

M = "llama-3.1-8b"  # bundled config: offline


@pytest.mark.parametrize("task,r,alpha,rslora", [
    ("style", 4, 4, False), ("standard", 16, 32, False), ("domain-shift", 64, 64, False), ("full-parity", 128, 64, True),
])
def test_task_table_normal_data(task, r, alpha, rslora):
    res = recommend(M, task, examples=5000)
    assert (res.r, res.lora_alpha, res.use_rslora) == (r, alpha, rslora)
    assert res.target_modules == "all-linear" and res.data["band"] == "normal"
    assert res.scale == pytest.approx(alpha / (r ** 0.5 if rslora else r))
    assert res.learning_rate == 3e-4 and res.lora_dropout == 0.05  # Llama-3.1-8B, hidden 4096
    for key in ("r", "lora_alpha", "use_rslora", "use_dora", "target_modules", "learning_rate", "lora_dropout"):
        assert res.reasons[key] and "\n" not in res.reasons[key]
        assert res.sources.get(key, ["x"]), key


@pytest.mark.parametrize("kw,band,r", [
    (dict(examples=100), "tiny", 8), (dict(examples=499), "tiny", 8), (dict(examples=500), "normal", 16),
    (dict(examples=50_000), "large", 32), (dict(tokens=100_000), "tiny", 8), (dict(tokens=60_000_000), "large", 32),
])
def test_small_data_leans_lower(kw, band, r):
    res = recommend(M, "standard", **kw)
    assert (res.data["band"], res.r) == (band, r)
    assert res.lora_dropout == {"tiny": 0.1, "normal": 0.05, "large": 0.0}[band]


def test_style_never_below_min_rank():
    assert recommend(M, "style", examples=10).r == 4


def test_high_rank_uses_rslora_and_warns_about_scale():
    res = recommend(M, "domain-shift", examples=100_000)
    assert (res.r, res.lora_alpha, res.use_rslora) == (128, 128, True)
    assert res.scale == pytest.approx(128 / 128 ** 0.5)
    assert any("s = 11.3" in w for w in res.warnings)


def test_full_parity_on_small_data_warns():
    res = recommend(M, "full-parity", examples=2000)
    assert any("large-data regime" in w for w in res.warnings)


def test_learning_rate_by_model_size_and_rank_exponent():
    assert recommend("llama-3.1-70b", "standard", examples=5000).learning_rate == 3e-4
    res = recommend(M, "domain-shift", examples=5000, lr_rank_exponent=0.84)
    assert res.learning_rate == pytest.approx(float(f"{3e-4 * (64 / 16) ** -0.84:.3g}"))
    assert "0.84" in res.reasons["learning_rate"]
    assert "no primary source" in recommend(M, "standard", examples=5000).reasons["learning_rate"]


# --- the learning rate by model width ------------------------------------------------------------
ANCHORS = DEFAULT_RULES["learning_rate"]["by_width"]["anchors"]


@pytest.mark.parametrize("hidden,lr", [
    (2048, 1e-3), (3072, 1e-3), (4096, 3e-4), (8192, 3e-4),  # the cookbook's measured Llama 3 values, exactly
    (16384, 3e-4),                                           # held flat above the widest anchor
    (1024, 1e-3 * 2 ** 0.781),                               # below: lr ~ hidden ** -0.781 (the cookbook's Llama fit)
    (256, 1e-3 * 8 ** 0.781),                                # the bundled demo model
    (3584, 1e-3 * (3584 / 3072) ** (math.log(0.3) / math.log(4096 / 3072))),  # log-log between 3072 and 4096
])
def test_lr_for_width_known_values(hidden, lr):
    assert lr_for_width(hidden, ANCHORS, 0.781, 0.0) == pytest.approx(lr, rel=1e-12)


def test_lr_for_width_is_monotone_and_continuous():
    widths = [64 * 2 ** (k / 8) for k in range(0, 81)]  # 64 .. 65536
    lrs = [lr_for_width(h, ANCHORS, 0.781, 0.0) for h in widths]
    assert all(a >= b * (1 - 1e-12) for a, b in zip(lrs, lrs[1:]))  # never larger for a wider model
    assert lrs[0] > 1e-2 > lrs[-1] == pytest.approx(3e-4)
    for h, _ in ANCHORS:  # no jump at an anchor
        assert lr_for_width(h * (1 - 1e-9), ANCHORS, 0.781, 0.0) == pytest.approx(lr_for_width(h * (1 + 1e-9), ANCHORS, 0.781, 0.0), rel=1e-6)
    assert lr_for_width(1024, [[4096, 3e-4], [2048, 1e-3]], 1.0, 0.0) == pytest.approx(2e-3)  # anchor order is free
    assert lr_for_width(8192, ANCHORS, 0.781, 1.0) == pytest.approx(3e-4)
    assert lr_for_width(16384, ANCHORS, 0.781, 1.0) == pytest.approx(1.5e-4)


def test_recommended_lr_by_model():
    demo = "src/loradial/assets/demo-model"
    from pathlib import Path

    demo = str(Path(__file__).resolve().parents[1] / demo)
    got = {m: recommend(m, "standard", examples=5000).learning_rate
           for m in (demo, "qwen2.5-0.5b", "llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b", "llama-3.1-70b", "qwen3-30b-a3b")}
    assert got == {demo: 5.07e-3, "qwen2.5-0.5b": 1.91e-3, "llama-3.2-1b": 1e-3, "llama-3.2-3b": 1e-3,
                   "llama-3.1-8b": 3e-4, "llama-3.1-70b": 3e-4,
                   "qwen3-30b-a3b": 1e-3}  # a MoE takes its width's LR (the cookbook's 1e-3), not its 30B size's
    sizes = sorted(got, key=lambda m: recommend(m, "standard", examples=5000).model["total_params"])
    dense = [m for m in sizes if m != "qwen3-30b-a3b"]
    assert all(got[a] >= got[b] for a, b in zip(dense, dense[1:]))  # monotone in size
    res = recommend(demo, "standard", examples=5000)
    assert "hidden size 256" in res.reasons["learning_rate"] and "0.781" in res.reasons["learning_rate"]
    assert any("tinker-cookbook" in s for s in res.sources["learning_rate"])


def test_model_width_keys():
    assert model_width({"hidden_size": 896}) == 896
    assert model_width({"n_embd": 768}) == 768
    assert model_width({"d_model": 512}) == 512
    assert model_width({"text_config": {"hidden_size": 2048}}) == 2048
    assert model_width({"vocab_size": 10}) is None


def test_learning_rate_overrides(tmp_path):
    assert recommend(M, "standard", examples=5000, learning_rate=5e-5).learning_rate == 5e-5
    assert "given" in recommend(M, "standard", examples=5000, learning_rate=5e-5).reasons["learning_rate"]
    f = tmp_path / "rules.yaml"
    f.write_text("learning_rate: {fixed: 2.0e-4}\n")
    assert recommend(M, "standard", examples=5000, rules_file=f).learning_rate == 2e-4
    f.write_text("learning_rate: {by_width: {anchors: [[4096, 1.0e-3]], below_exponent: 1.0}}\n")
    assert recommend(M, "standard", examples=5000, rules_file=f).learning_rate == 1e-3
    assert recommend("llama-3.2-1b", "standard", examples=5000, rules_file=f).learning_rate == 2e-3
    assert load_rules(None, learning_rate={"fixed": 1e-4})["learning_rate"]["fixed"] == 1e-4
    for bad, needle in (("learning_rate: {base: 1.0e-4}", "no longer a rule"),
                        ("learning_rate: {by_width: {anchors: [[0, 1.0e-3]]}}", "anchors"),
                        ("learning_rate: {by_width: {anchors: [[2048, 1.0e-3], [2048, 2.0e-3]]}}", "two anchors"),
                        ("learning_rate: {fixed: -1}", "learning_rate.fixed"),
                        ("learning_rate: {by_width: {anchors: [[2048, 1.0e-3]], below_exponent: x}}", "below_exponent")):
        f.write_text(bad + "\n")
        with pytest.raises(LoradialError, match=needle):
            recommend(M, "standard", examples=5000, rules_file=f)
    for bad in (0, -1e-3, float("nan"), True, "1e-3"):
        with pytest.raises(LoradialError, match="learning rate"):
            recommend(M, "standard", examples=5000, learning_rate=bad)


def test_tiny_model_from_config_and_no_width(tmp_path):
    from conftest import TINY_CONFIGS

    from loradial.advice.rules import lora_learning_rate

    cfg = {**TINY_CONFIGS["llama"], "architectures": ["LlamaForCausalLM"]}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert recommend(str(tmp_path), "standard", examples=1000).learning_rate == pytest.approx(
        float(f"{1e-3 * (2048 / cfg['hidden_size']) ** 0.781:.3g}"))
    rules = load_rules(None)
    lr, why = lora_learning_rate(None, 16, rules)  # a config without a hidden size: the widest anchor's (smallest) LR
    assert lr == 3e-4 and "no hidden size" in why
    assert lora_learning_rate(256, 64, load_rules(None, learning_rate={"rank_exponent": 1.0}))[0] == pytest.approx(
        float(f"{1e-3 * 8 ** 0.781 / 4:.3g}"))


@pytest.mark.parametrize("fmt,path", [("trl", ("learning_rate",)), ("axolotl", ("learning_rate",)),
                                      ("llamafactory", ("learning_rate",)), ("unsloth", ("training_args", "learning_rate")),
                                      ("torchtune", ("optimizer", "lr"))])
def test_exports_carry_the_width_lr(fmt, path):
    res = recommend("llama-3.2-1b", "standard", examples=5000, export=fmt)  # PEFT's LoraConfig holds no LR
    assert res.learning_rate == 1e-3
    doc = res.export["document"]
    for key in path:
        doc = doc[key]
    assert float(doc) == 1e-3 and "0.001" in res.export["text"]


# --- memory fitting ------------------------------------------------------------------------------
@dataclasses.dataclass
class FakeEstimate:
    total_bytes: int
    breakdown: dict


def fake_estimator(calls):
    """1 GiB static + 1 GiB per sequence (0.25 with checkpointing); 4-bit saves 0.5 GiB; DoRA adds 0.5 GiB."""
    def estimate(info, pairs, *, use_dora=False, batch_size=1, seq_len=512, dtype="bf16", quant="none",
                 gradient_checkpointing=False, **_):
        calls.append((batch_size, gradient_checkpointing, quant, use_dora))
        gib = 2 ** 30
        total = gib + batch_size * gib * (0.25 if gradient_checkpointing else 1.0)
        total -= gib // 2 if quant == "4bit" else 0
        total += gib // 2 if use_dora else 0
        return FakeEstimate(int(total), {"frozen_weights": int(total)})
    return estimate


@pytest.mark.parametrize("gib,mb,gc,quant,dora", [
    (100 / 0.92, 16, False, "none", True),     # 17 GiB fits 16 sequences, DoRA too
    (5.2 / 0.92, 4, False, "none", False),     # 5 GiB without checkpointing; DoRA's +0.5 does not fit
    (1.6 / 0.92, 2, True, "none", False),      # only with checkpointing (DoRA would need 2.0)
    (2.0 / 0.92, 1, False, "none", False),     # micro batch 1 without checkpointing beats 4 with it
    (0.8 / 0.92, 1, True, "4bit", False),      # only with a 4-bit base
])
def test_batch_fitting(monkeypatch, gib, mb, gc, quant, dora):
    import loradial.cost.memory

    calls = []
    monkeypatch.setattr(loradial.cost.memory, "estimate_training_memory", fake_estimator(calls))
    res = recommend(M, "standard", examples=5000, gpu_memory=gib)
    assert (res.micro_batch_size, res.gradient_checkpointing, res.quant, res.use_dora) == (mb, gc, quant, dora)
    assert res.gradient_accumulation_steps == 16 // mb
    assert res.memory["fits"] is True and res.memory["total_bytes"] <= res.memory["budget_bytes"]
    # PEFT's fast DoRA path (the one the memory model covers) needs lora_dropout 0
    assert res.lora_dropout == (0.0 if dora else 0.05) and res.peft_config["lora_dropout"] == res.lora_dropout
    assert ("DoRA is on" in res.reasons["lora_dropout"]) == dora


def test_nothing_fits(monkeypatch):
    import loradial.cost.memory

    monkeypatch.setattr(loradial.cost.memory, "estimate_training_memory", fake_estimator([]))
    res = recommend(M, "standard", examples=5000, gpu_memory=0.5)
    assert res.memory["fits"] is False and res.use_dora is False
    assert any("does not fit" in w for w in res.warnings)


def test_real_memory_model():
    res = recommend("llama-3.2-1b", "standard", examples=5000, gpu_memory=24, seq_len=1024)
    assert res.memory["fits"] and res.memory["total_bytes"] <= 24 * 2 ** 30
    assert res.micro_batch_size * res.gradient_accumulation_steps >= 16
    big = recommend("llama-3.1-70b", "standard", examples=5000, gpu_memory=24, seq_len=512)
    assert big.quant == "4bit" or big.memory["fits"] is False
    none = recommend(M, "standard", examples=5000)
    assert none.micro_batch_size is None and none.memory["total_bytes"] > 16 * 2 ** 30
    assert "--gpu-memory" in none.reasons["micro_batch_size"]


def test_local_tiny_model(tmp_path):
    from conftest import TINY_CONFIGS

    (tmp_path / "config.json").write_text(json.dumps({**TINY_CONFIGS["llama"], "architectures": ["LlamaForCausalLM"]}))
    res = recommend(str(tmp_path), "standard", examples=1000, gpu_memory=1, seq_len=64)
    assert res.memory["fits"] and res.micro_batch_size == 16 and res.use_dora is True


# --- rules -----------------------------------------------------------------------------------------
def test_rules_cite_known_sources():
    for task in DEFAULT_RULES["tasks"].values():
        assert set(task["sources"]) <= set(SOURCES)
    for steps in DEFAULT_RULES["ladder"].values():
        for step in steps:
            assert set(step["sources"]) <= set(SOURCES)
    assert "no primary source" in SOURCES["seed"]["cite"]


def test_alpha_rules():
    assert [alpha_from_rule(x, 16) for x in ("r", "2r", "r/2", "0.5r", 32)] == [16, 32, 8, 8, 32]
    with pytest.raises(LoradialError):
        alpha_from_rule("sqrt(r)", 16)


def test_ladder_ops():
    step = {"change": {"r": "/2", "lora_alpha": "rank_rule"}}
    assert ladder_step_config(step, {"r": 16, "lora_alpha": 32}) == {"r": 8, "lora_alpha": 16}
    assert ladder_step_config(step, {"r": 16, "lora_alpha": 32, "use_rslora": True}) == {"r": 8}
    assert ladder_step_config({"change": {"learning_rate": "x2"}}, {}) == {"learning_rate": "x2"}


def test_rules_file_override(tmp_path, cli):
    f = tmp_path / "rules.yaml"
    f.write_text(yaml.safe_dump({"tasks": {"standard": {"ranks": [8, 8], "alpha": "r"}}, "learning_rate": {"fixed": 1e-4}}))
    res = recommend(M, "standard", examples=5000, rules_file=f)
    assert (res.r, res.lora_alpha, res.learning_rate) == (8, 8, 1e-4)
    f.write_text("tasks:\n  mytask: {ranks: [2, 4], alpha: r, sources: [my notes]}\n")
    assert recommend(M, "mytask", examples=5000, rules_file=f).r == 2
    f.write_text("taskz: {}\n")
    code, out, err = cli("recommend", "--model", M, "--task", "standard", "--examples", "10", "--rules", f)
    assert code == 2 and "unknown rules keys" in err
    f.write_text("tasks:\n  standard: {ranks: [32, 16]}\n")
    with pytest.raises(LoradialError, match="ranks"):
        load_rules(f)


# --- CLI, export, errors ---------------------------------------------------------------------------
def test_cli_json(cli):
    code, out, err = cli("recommend", "--model", M, "--task", "standard", "--examples", "20000", "--json")
    assert code == 0
    doc = json.loads(out)
    for key in ("r", "lora_alpha", "use_rslora", "use_dora", "target_modules", "learning_rate", "reasons", "ladder"):
        assert key in doc
    assert doc["schema_version"] == 1 and set(doc["ladder"]) == {"underfits", "overfits", "unstable"}


def test_cli_human_and_export(cli, tmp_path):
    code, out, err = cli("recommend", "--model", M, "--task", "style", "--examples", "300", "--export", "trl")
    assert code == 0
    assert yaml.safe_load(out)["lora_r"] == 4 and "if it overfits" in err
    target = tmp_path / "lora.json"
    code, out, err = cli("recommend", "--model", M, "--task", "standard", "--tokens", "3000000", "--gpu-memory", "40",
                         "--export", "peft", "--out", target)
    assert code == 0 and out == ""
    import peft

    cfg = peft.LoraConfig(**json.loads(target.read_text()))
    assert cfg.r == 16 and cfg.lora_alpha == 32
    code, out, _ = cli("recommend", "--model", M, "--task", "standard", "--examples", "300", "--export", "unsloth", "--json")
    assert json.loads(out)["export"]["document"]["get_peft_model"]["r"] == 8


@pytest.mark.parametrize("args,needle", [
    (["--task", "poetry", "--examples", "10"], "unknown task type"),
    (["--task", "standard", "--examples", "0"], "positive integer"),
    (["--task", "standard", "--tokens", "-5"], "positive integer"),
    (["--task", "standard"], "exactly one of"),
    (["--task", "standard", "--examples", "10", "--tokens", "10"], "exactly one of"),
    (["--task", "standard", "--examples", "10", "--gpu-memory", "0"], "--gpu-memory"),
    (["--task", "standard", "--examples", "10", "--export", "keras"], "unknown export format"),
])
def test_bad_input_is_one_line(cli, args, needle):
    code, out, err = cli("recommend", "--model", M, *args)
    assert code == 2 and out == "" and needle in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1


def test_unknown_model(cli):
    code, _, err = cli("recommend", "--model", "no-such-model", "--task", "standard", "--examples", "10")
    assert code == 2 and "unknown model" in err


def test_no_dora_where_peft_cannot_apply_it():
    res = recommend("qwen3-30b-a3b", "standard", examples=3000, gpu_memory=160)
    assert res.use_dora is False and "DoRA" in res.reasons["use_dora"] and res.learning_rate == 1e-3  # hidden 2048


def test_dora_recommendation_is_consistent_about_dropout():
    res = recommend("llama-3.1-8b", "standard", examples=20000, gpu_memory=24)
    assert res.use_dora and res.lora_dropout == 0.0
    assert "lora_dropout 0 (DoRA)" in res.memory["model"]
    from loradial.advice import rules

    r = rules.load_rules(None)
    base = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0}
    assert "more_dropout" in [s["action"] for s in rules.ladder_for("memorizing", base, r)]
    assert "more_dropout" not in [s["action"] for s in rules.ladder_for("memorizing", {**base, "use_dora": True}, r)]
