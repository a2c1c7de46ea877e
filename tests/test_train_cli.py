"""`loradial train` and `loradial.train`: outputs, metrics, PEFT loading, clean errors."""

from __future__ import annotations

import json

import peft
import pytest
import torch

import loradial
from test_engine_fixtures import pc_records, save_tiny_model, sentences, tiny_llama, tiny_tokenizer, write_jsonl


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    return {"model": save_tiny_model(d / "model"), "data": write_jsonl(d / "d.jsonl", pc_records(24)),
            "eval": write_jsonl(d / "e.jsonl", pc_records(4, seed=5)), "dir": d}


def test_cli_trains_and_writes_peft_adapter_and_metrics(files, cli, tmp_path):
    out = tmp_path / "run"
    code, stdout, stderr = cli("train", "--model", files["model"], "--data", files["data"], "--rank", "4", "--alpha", "8",
                               "--rslora", "--dora", "--targets", "attention", "--lr", "1e-2", "--epochs", "1",
                               "--batch-size", "8", "--out", out, "--eval-data", files["eval"], "--eval-every", "2",
                               "--json")
    assert code == 0, stderr
    res = json.loads(stdout)
    assert res["schema_version"] == 1 and res["steps"] == res["total_steps"] == 3
    (a,) = res["adapters"]
    assert a["status"] == "done" and a["use_dora"] and a["use_rslora"] and a["eval_loss"] > 0
    cfg = json.loads((out / "adapters" / "default" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8 and cfg["use_dora"] and cfg["use_rslora"]
    assert sorted(cfg["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert {"step", "adapter", "loss", "lr", "grad_norm", "tokens", "elapsed"} <= set(steps[0])
    assert [r["step"] for r in rows if "eval_loss" in r] == [2, 3]
    pm = peft.PeftModel.from_pretrained(tiny_llama(), out / "adapters" / "default")
    assert pm.peft_config["default"].use_dora
    assert json.loads((out / "train_result.json").read_text())["steps"] == 3


@pytest.mark.parametrize("extra, needle", [
    ([], "missing --model, --data, --rank, --alpha, --out"),
    (["--model", "M", "--data", "D", "--rank", "4", "--alpha", "8", "--out", "O", "--steps", "2", "--epochs", "1"],
     "exactly one of steps and epochs"),
    (["--resume", "nowhere"], "no checkpoint in nowhere"),
])
def test_cli_errors(cli, extra, needle, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, _, stderr = cli("train", *extra)
    assert code == 2 and needle in stderr and "Traceback" not in stderr


def test_cli_bad_data_names_the_line_and_writes_nothing(files, cli, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "the cat"}\n{"text": }\n')
    out = tmp_path / "run"
    code, _, stderr = cli("train", "--model", files["model"], "--data", bad, "--rank", "4", "--alpha", "8",
                          "--steps", "2", "--out", out)
    assert code == 2 and "bad.jsonl line 2: invalid JSON" in stderr
    assert not out.exists()
    out.mkdir()
    (out / "x").write_text("keep")
    code, _, stderr = cli("train", "--model", files["model"], "--data", files["data"], "--rank", "4", "--alpha", "8",
                          "--steps", "2", "--out", out)
    assert code == 2 and "not empty" in stderr


def test_api_with_loaded_model_chat_data_and_overwrite(tmp_path):
    tok = tiny_tokenizer()
    s = sentences(24, seed=3)
    chats = [{"messages": [{"role": "user", "content": s[i]}, {"role": "assistant", "content": s[i + 1]}]}
             for i in range(0, 24, 2)]
    kw = dict(tokenizer=tok, rank=2, alpha=4, targets="q_proj,v_proj", lr=1e-2, steps=3, batch_size=4,
              out=tmp_path / "run", eval_fraction=0.25, packing=True, max_len=16, grad_accum=2)
    res = loradial.train(tiny_llama(), chats, **kw)
    assert res.steps == 3 and res.adapters[0]["eval_loss"] is not None
    res2 = loradial.train(tiny_llama(), chats, overwrite=True, **kw)
    assert res2.adapters[0]["final_loss"] == pytest.approx(res.adapters[0]["final_loss"], rel=1e-6)
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len([r for r in rows if '"loss"' in r]) == 3  # overwrite started a fresh metrics file
    with pytest.raises(loradial.LoradialError, match="tokenizer"):
        loradial.train(tiny_llama(), chats, **{**kw, "tokenizer": None, "out": tmp_path / "other"})


def test_train_many_and_tokenized_input(tmp_path):
    from loradial.data import tokenize_records
    from loradial.engine import AdapterConfig
    from loradial.engine.session import train_many
    from loradial.spec import LoraSpec

    ex = tokenize_records(pc_records(12), tiny_tokenizer(), 64)
    configs = [AdapterConfig(f"r{r}", LoraSpec(r=r, lora_alpha=2 * r, target_modules="all-linear"), lr=lr)
               for r, lr in ((2, 1e-2), (8, 1e-3))]
    res = train_many(tiny_llama(), ex, configs, out=tmp_path / "many", batch_size=4, steps=2)
    assert [a["name"] for a in res.adapters] == ["r2", "r8"]
    for a in res.adapters:
        state = peft.PeftModel.from_pretrained(tiny_llama(), a["path"]).state_dict()
        assert any(torch.count_nonzero(v) for k, v in state.items() if "lora_B" in k)


@pytest.mark.parametrize("args, message", [
    (["--rank", "0", "--alpha", "16"], "--rank must be a positive integer, got 0"),
    (["--rank", "0"], "--rank must be a positive integer, got 0"),
    (["--rank", "-4", "--alpha", "16"], "--rank must be a positive integer, got -4"),
    (["--rank", "8", "--alpha", "0"], "--alpha must be a positive number, got 0"),
    (["--rank", "8", "--alpha", "16", "--batch-size", "0"], "--batch-size must be greater than 0 (got 0)"),
    (["--rank", "8", "--alpha", "16", "--lr", "-1"], "--lr must be greater than 0 (got -1.0)"),
    (["--rank", "8", "--alpha", "16", "--dtype", "fp16"], "--dtype must be 'auto', 'bf16' or 'fp32' (got 'fp16')"),
])
def test_bad_numbers_exit_2_naming_the_real_problem(cli, tmp_path, args, message):
    """`--rank 0` once trained rank 8 (`rank or 8`) and `--alpha 0` wrote alpha 16: now each is a clean exit 2."""
    code, _, err = cli("train", "--model", "llama-2-7b", "--data", tmp_path / "none.jsonl", "--steps", "1",
                       "--out", tmp_path / "out", *args)
    assert code == 2 and message in err and "missing" not in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_non_numeric_rank_is_a_usage_error(cli, tmp_path):
    code, _, err = cli("train", "--rank", "eight", "--alpha", "16", "--out", tmp_path / "out")
    assert code == 2 and "--rank" in err and "Traceback" not in err and not (tmp_path / "out").exists()
