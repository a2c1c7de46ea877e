"""train / sweep / tune outputs carry a model card (README.md) and the base model's tokenizer files."""

from __future__ import annotations

import json

from test_engine_fixtures import pc_records, save_tiny_model, write_jsonl

from loradial.adapters.card import CARD_MARK, model_card


def _check_card(adapter_dir, base, r, alpha, lr):
    import peft

    from test_engine_fixtures import tiny_llama

    text = (adapter_dir / "README.md").read_text()
    assert text.startswith(f"---\nbase_model: {base}\nlibrary_name: peft\n")
    assert f"| r | {r} |" in text and f"| lora_alpha | {alpha:g} |" in text and f"| learning rate | {lr:.6g} |" in text
    assert "| eval loss (at the end) |" in text and "PeftModel.from_pretrained" in text
    assert f"{CARD_MARK} " in text
    assert (adapter_dir / "tokenizer.json").is_file() and (adapter_dir / "tokenizer_config.json").is_file()
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(adapter_dir)).chat_template  # the adapter directory stands alone
    peft.PeftModel.from_pretrained(tiny_llama(), str(adapter_dir))  # and PEFT still loads it


def test_train_writes_card_and_tokenizer(tmp_path, cli):
    model = save_tiny_model(tmp_path / "model")
    data = write_jsonl(tmp_path / "d.jsonl", pc_records(24))
    code, _, err = cli("train", "--model", model, "--data", data, "--rank", "4", "--alpha", "8", "--steps", "3",
                       "--eval-fraction", "0.25", "--lr", "1e-3", "--out", tmp_path / "run")
    assert code == 0, err
    (adapter,) = (tmp_path / "run" / "adapters").iterdir()
    _check_card(adapter, model, 4, 8, 1e-3)
    res = json.loads((tmp_path / "run" / "train_result.json").read_text())
    assert f"| eval loss (at the end) | {res['adapters'][0]['eval_loss']:.6g} |" in (adapter / "README.md").read_text()


def test_sweep_writes_a_card_per_adapter_and_resize_does_not_copy_it(tmp_path, cli):
    model = save_tiny_model(tmp_path / "model")
    data = write_jsonl(tmp_path / "d.jsonl", pc_records(24))
    code, _, err = cli("sweep", "--model", model, "--data", data, "--ranks", "2,4", "--steps", "2",
                       "--eval-fraction", "0.25", "--out", tmp_path / "sw")
    assert code == 0, err
    results = json.loads((tmp_path / "sw" / "results.json").read_text())
    for c in results["configs"]:
        _check_card(tmp_path / "sw" / "adapters" / c["name"], model, c["r"], c["lora_alpha"], c["learning_rate"])
    name = results["configs"][-1]["name"]
    code, _, err = cli("resize", tmp_path / "sw" / "adapters" / name, "--rank", "1", "--out", tmp_path / "small")
    assert code == 0, err
    assert not (tmp_path / "small" / "README.md").exists()  # the card described the rank-4 adapter
    assert (tmp_path / "small" / "tokenizer.json").is_file()


def test_card_without_eval_or_base():
    text = model_card({"r": 8, "lora_alpha": 16, "use_rslora": True, "target_modules": ["q_proj"],
                       "rank_pattern": {"q_proj": 4}}, {"learning_rate": 2e-4})
    assert "base_model" not in text.split("---")[1]
    assert "rsLoRA, s = lora_alpha / sqrt(r)" in text and '| rank_pattern | `{"q_proj": 4}` |' in text
    assert "| eval loss | not measured (no eval data) |" in text
