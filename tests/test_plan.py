"""`loradial plan`: the API result, the CLI (JSON, human output, errors), argument parsing."""

from __future__ import annotations

import json

import pytest

import importlib

import loradial
from loradial.errors import LoradialError
from loradial.cost.planning import parse_exclude, parse_layers, parse_pattern, plan

plan_module = importlib.import_module("loradial.cost.planning")
ROW_KEYS = {"rank", "targets", "target_modules", "trainable_params", "trainable_percent", "modules", "adapter_bytes",
            "peak_memory_bytes", "memory_breakdown", "extra_flops_per_token", "lora_alpha", "scaling", "peft_config",
            "unused_pattern_keys", "n_modules", "weight_side_flops_per_step", "target_parameters"}


def test_one_row_per_target_set_and_rank(cli):
    code, out, err = cli("plan", "--model", "llama-2-7b", "--rank", "8,16,64,256", "--targets", "attention",
                         "--targets", "all-linear", "--targets", "q_proj,v_proj", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema_version"] == 1
    assert doc["model"]["name"] == "llama-2-7b" and doc["model"]["total_params"] == 6_738_415_616
    assert doc["model"]["model_type"] == "llama" and doc["model"]["source"] == "bundled"
    rows = doc["rows"]
    assert [(r["targets"], r["rank"]) for r in rows] == [
        (t, r) for t in ("attention", "all-linear", "q_proj,v_proj") for r in (8, 16, 64, 256)]
    for row in rows:
        assert ROW_KEYS <= set(row)
        assert row["adapter_bytes"] == {"fp32": 4 * row["trainable_params"], "bf16": 2 * row["trainable_params"],
                                        "fp16": 2 * row["trainable_params"]}
        assert sum(t["params"] for t in row["modules"]) == row["trainable_params"]
        assert row["trainable_percent"] == pytest.approx(100 * row["trainable_params"] / 6_738_415_616)
        assert row["lora_alpha"] == row["rank"] and row["scaling"] == 1.0
        assert {"type", "kind", "d_in", "d_out", "count", "rank", "ranks", "params"} <= set(row["modules"][0])
    qv = [r for r in rows if r["targets"] == "q_proj,v_proj"]
    assert [r["trainable_params"] for r in qv] == [4_194_304, 8_388_608, 33_554_432, 134_217_728]
    assert qv[0]["extra_flops_per_token"] == 2 * 8 * (4096 + 4096) * 2 * 32
    assert rows[4]["trainable_params"] == 19_988_480 and rows[4]["target_modules"] == "all-linear"
    assert rows[0]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert "extra_flops_per_token" in doc["formulas"]


def test_human_output_goes_to_stderr(cli):
    code, out, err = cli("plan", "--model", "gpt2", "--rank", "4", "--targets", "attention", "--dora")
    assert code == 0 and out == ""
    assert "gpt2" in err and "attn.c_attn" in err and "trainable" in err


def test_default_command_runs():
    res = plan()  # llama-2-7b, ranks 8..256, attention and all-linear
    assert len(res.rows) == 8 and res.model["name"] == "llama-2-7b"


def test_loradial_plan_is_the_verb():
    import loradial.cost.planning  # noqa: F401  (importing the module never rebinds the verb)

    assert loradial.plan("gpt2", 8, "c_attn").rows[0].trainable_params == 12 * 8 * (768 + 2304)
    assert plan_module.plan is plan


def test_options_flow_into_peft_config():
    res = plan("llama-3.2-1b", [8], ["attention", "all-linear"], alpha=32, use_rslora=True, use_dora=True,
               layers="0-1", exclude="k_proj", rank_pattern="q_proj=4", alpha_pattern='{"o_proj": 2}')
    att, lin = res.rows
    assert att.peft_config["layers_to_transform"] == [0, 1] and att.peft_config["exclude_modules"] == ["k_proj"]
    assert att.peft_config["use_dora"] and att.peft_config["use_rslora"] and att.peft_config["rank_pattern"] == {"q_proj": 4}
    assert att.scaling == pytest.approx(32 / 8 ** 0.5)
    assert lin.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert lin.n_modules == 2 * 6  # two layers, k_proj excluded
    assert res.settings["layers_to_transform"] == [0, 1]


def test_unused_pattern_keys_are_reported(cli):
    code, out, err = cli("plan", "--model", "gpt2", "--rank", "8", "--targets", "c_attn", "--rank-pattern",
                         "c_attn=4,q_proj=2", "--json")
    doc = json.loads(out)
    assert doc["rows"][0]["unused_pattern_keys"] == {"rank_pattern": ["q_proj"], "alpha_pattern": []}
    assert any("'q_proj'" in n and "ignores it silently" in n for n in doc["notes"])
    assert doc["rows"][0]["trainable_params"] == 12 * 4 * (768 + 2304)


def test_moe_rows(cli):
    code, out, err = cli("plan", "--model", "mixtral-8x7b", "--rank", "8", "--targets", "mlp", "--json")
    row = json.loads(out)["rows"][0]
    assert row["target_modules"] == ["w1", "w3", "w2"] and sorted(row["target_parameters"]) == ["down_proj", "gate_up_proj"]
    gate_up = next(t for t in row["modules"] if t["type"].endswith("gate_up_proj"))
    assert (gate_up["kind"], gate_up["experts"], gate_up["rank"]) == ("param", 8, 16)
    assert row["extra_flops_per_token"] == 0 and row["weight_side_flops_per_step"] > 0
    code, out, err = cli("plan", "--model", "qwen2-57b-a14b", "--rank", "8", "--targets", "attention", "--json")
    assert any("not targeted" in n for n in json.loads(out)["notes"])


def test_memory_plumbing(monkeypatch):
    seen = {}

    class Est:
        total_bytes = 123
        breakdown = {"frozen_weights": 100, "activations": 23}

    def fake(info, targeted, **kw):
        seen.update(kw, n=len(targeted), info=info.name)
        return Est()

    monkeypatch.setattr(plan_module, "estimate_training_memory", fake)
    row = plan("gpt2", [8], ["c_attn"], batch_size=4, seq_len=128, dtype="float16", quant="4bit",
               gradient_checkpointing=True).rows[0]
    assert row.peak_memory_bytes == 123 and row.memory_breakdown == {"frozen_weights": 100, "activations": 23}
    assert seen == dict(use_dora=False, batch_size=4, seq_len=128, dtype="fp16", quant="4bit",
                        gradient_checkpointing=True, attn_implementation="sdpa", n=12, info="gpt2")


def test_memory_fields():
    res = plan("llama-3.2-1b", [8, 64], ["q_proj,v_proj"])
    parts = {"frozen_weights", "adapter_weights", "gradients", "optimizer_states", "activations", "logits", "overhead"}
    for row in res.rows:
        assert row.peak_memory_bytes > 0 and set(row.memory_breakdown) <= parts


# --- errors: one line + hint, exit 2 -----------------------------------------------------------------
ERRORS = [
    (["--model", "lama-2-7b"], "unknown model 'lama-2-7b'", "did you mean"),
    (["--model", "nobody/nothing"], "could not fetch config.json", "network"),
    (["--rank", "0"], "rank must be a positive integer", "--rank"),
    (["--rank", "-4"], "rank must be a positive integer", "--rank"),
    (["--rank", "8.5"], "invalid rank '8.5'", "comma-separated"),
    (["--rank", "eight"], "invalid rank 'eight'", "comma-separated"),
    (["--alpha", "0"], "alpha must be a positive number", "--alpha"),
    (["--alpha", "-2"], "alpha must be a positive number", "--alpha"),
    (["--batch-size", "0"], "--batch-size must be a positive integer", "--batch-size"),
    (["--seq-len", "-1"], "--seq-len must be a positive integer", "--seq-len"),
    (["--dtype", "fp8"], "unknown dtype 'fp8'", "bf16"),
    (["--quant", "3bit"], "unknown quantization '3bit'", "4bit"),
    (["--attn", "magic"], "unknown attention implementation", "sdpa"),
    (["--targets", "qproj"], "match no module", "self_attn.q_proj"),
    (["--targets", "re:.*self_attn"], "cannot wrap", "q_proj"),
    (["--targets", "q_proj", "--rank-pattern", "q_proj"], "not key=value", "q_proj=4"),
    (["--targets", "q_proj", "--rank-pattern", "q_proj=2.5"], "must be a positive integer", None),
    (["--targets", "q_proj", "--rank-pattern", "{bad json"], "not valid JSON", None),
    (["--targets", "q_proj", "--layers", "one"], "invalid layer 'one'", "--layers"),
    (["--targets", "re:.*q_proj", "--layers", "0"], "layers_to_transform", "name list"),
    (["--targets", "q_proj", "--lora-bias", "--dora"], "lora_bias together with DoRA", None),
]


@pytest.mark.parametrize("args,message,hint", ERRORS, ids=[" ".join(a) for a, _, _ in ERRORS])
def test_bad_input_exits_2(cli, args, message, hint):
    code, out, err = cli("plan", "--model", "llama-3.2-1b", "--rank", "8", *args)
    assert code == 2 and out == ""
    assert err.startswith("error:") and message in err and "Traceback" not in err
    if hint:
        assert "hint:" in err and hint in err


def test_bad_model_directories(cli, tmp_path):
    code, _, err = cli("plan", "--model", str(tmp_path))
    assert code == 2 and "no config.json" in err
    (tmp_path / "config.json").write_text("{oops")
    code, _, err = cli("plan", "--model", str(tmp_path))
    assert code == 2 and "not valid JSON" in err
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "not_a_real_type"}))
    code, _, err = cli("plan", "--model", str(tmp_path))
    assert code == 2 and "unknown or malformed model_type" in err


# --- parsing helpers ------------------------------------------------------------------------------------
def test_parsers():
    assert parse_pattern("q_proj=4, layers\\.0\\..*=2") == {"q_proj": 4, "layers\\.0\\..*": 2}
    assert parse_pattern('{"a": 2, "b": 3}') == {"a": 2, "b": 3}
    assert parse_pattern("a=0.5", float, "alpha_pattern") == {"a": 0.5}
    assert parse_pattern(None) == {} and parse_pattern({"x": 1}) == {"x": 1}
    with pytest.raises(LoradialError):
        parse_pattern('{"a": true}')
    assert parse_layers("0-2,5,1") == [0, 1, 2, 5] and parse_layers(3) == [3] and parse_layers(None) is None
    with pytest.raises(LoradialError):
        parse_layers([-1])
    assert parse_exclude("a, b") == ["a", "b"] and parse_exclude("re:.*x") == ".*x" and parse_exclude(None) is None
    with pytest.raises(LoradialError, match="no rank"):
        plan("gpt2", [], ["c_attn"])
