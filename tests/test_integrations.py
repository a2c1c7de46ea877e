"""LoradialCallback inside a real HF Trainer and a real TRL SFTTrainer (tiny Llama from config, CPU)."""

from __future__ import annotations

import json


from test_engine_fixtures import sentences, tiny_llama, tiny_tokenizer

from loradial.advice.logs import read_log
from loradial.integrations import LoradialCallback, metrics_rows


def _lora():
    import peft

    return peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")


def _lines(path):
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def _check_run(cb, lines_out, steps, eval_steps):
    rows = _lines(cb.metrics_path)
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in train] == list(range(1, steps + 1))
    assert [r["step"] for r in evals] == eval_steps
    assert all(set(r) >= {"step", "adapter", "loss", "lr", "grad_norm", "elapsed"} for r in train)
    log = read_log(cb.metrics_path)
    assert log.format == "loradial" and list(log.curves) == ["default"]
    said = [ln for ln in lines_out if ln.startswith("[step")]
    assert len(said) == len(eval_steps) and all("loradial diagnose:" in ln for ln in said)
    assert len(cb.diagnoses) == len(eval_steps)
    assert cb.diagnoses[-1].evidence["config"]["r"] == 4  # the adapter_config.json written beside the metrics
    assert any(ln.startswith("loradial analyze: 4 modules, r=4") for ln in lines_out)  # 2 layers x (q, v)
    saved = json.loads((cb.dir / "analysis.json").read_text())
    assert saved["n_modules"] == 4 and saved["recommendation"]["rank"] >= 1
    assert cb.analysis.n_modules == 4


def test_callback_in_hf_trainer(tmp_path):
    import peft
    from transformers import Trainer, TrainingArguments

    from loradial.data import collate, tokenize_records

    tok = tiny_tokenizer()
    model = peft.get_peft_model(tiny_llama(vocab_size=len(tok)), _lora())
    data = tokenize_records([{"text": s} for s in sentences(24)], tok, 32)
    out: list[str] = []
    cb = LoradialCallback(echo=out.append)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=6, logging_steps=1, eval_strategy="steps", eval_steps=2,
                             per_device_train_batch_size=4, per_device_eval_batch_size=8, learning_rate=5e-3,
                             report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data[:16], eval_dataset=data[16:],
                      data_collator=lambda b: collate(b, tok.pad_token_id), callbacks=[cb])
    trainer.train()
    assert cb.dir == tmp_path / "loradial"
    _check_run(cb, out, 6, [2, 4, 6])


def test_callback_in_trl_sft_trainer(tmp_path):
    import datasets
    import trl

    tok = tiny_tokenizer()
    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_list([{"text": s} for s in sentences(24, seed=1)])
    out: list[str] = []
    cb = LoradialCallback(out=tmp_path / "ld", echo=out.append)
    args = trl.SFTConfig(output_dir=str(tmp_path / "run"), max_steps=4, logging_steps=1, eval_strategy="steps", eval_steps=2,
                         per_device_train_batch_size=4, per_device_eval_batch_size=8, learning_rate=5e-3, max_length=32,
                         report_to=[], use_cpu=True, bf16=False, save_strategy="no", disable_tqdm=True, dataset_num_proc=None)
    trainer = trl.SFTTrainer(model=tiny_llama(vocab_size=len(tok)), args=args, train_dataset=ds.select(range(16)),
                             eval_dataset=ds.select(range(16, 24)), processing_class=tok, peft_config=_lora(),
                             callbacks=[cb])
    trainer.train()
    assert cb.dir == tmp_path / "ld"
    _check_run(cb, out, 4, [2, 4])


def test_rows_and_early_eval(tmp_path):
    assert metrics_rows({"epoch": 1.0}, 3, "default", 0.0) == []
    (row,) = metrics_rows({"loss": float("nan"), "learning_rate": 1e-3}, 3, "a", 1.23456)
    assert row == {"step": 3, "adapter": "a", "loss": None, "lr": 1e-3, "grad_norm": None, "elapsed": 1.2346}
    from types import SimpleNamespace

    out: list[str] = []
    cb = LoradialCallback(out=tmp_path, echo=out.append, analyze=False)
    state = SimpleNamespace(is_world_process_zero=True, global_step=0)
    cb.on_train_begin(SimpleNamespace(output_dir=str(tmp_path)), state, None, model=None)
    state.global_step = 1
    cb.on_log(None, state, None, logs={"eval_loss": 2.0})
    cb.on_evaluate(None, state, None)
    assert "no training loss logged yet" in out[-1]
    cb.on_log(None, state, None, logs={"loss": 2.5, "learning_rate": 1e-3, "grad_norm": 1.0})
    cb.on_evaluate(None, state, None)  # one point: a verdict all the same (too few points), never an exception
    assert out[-1].startswith("[step 1] loradial diagnose:")
