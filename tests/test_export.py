"""export: every trainer's own key names, alpha explicit, warnings for what a format cannot express.
Each tool's own parser (or its released field list) reads every export in test_export_schemas.py."""

from __future__ import annotations

import json

import pytest
import yaml

from loradial.errors import LoradialError
from loradial.advice.export import FORMATS, export_config, export_sweep


CONFIGS = {
    "standard": dict(r=16, lora_alpha=32, use_rslora=False, use_dora=False, target_modules="all-linear",
                     lora_dropout=0.05, learning_rate=2e-4, micro_batch_size=4, gradient_accumulation_steps=4,
                     gradient_checkpointing=True, seq_len=2048, model="meta-llama/Llama-3.1-8B"),
    "rslora_dora": dict(r=128, lora_alpha=64, use_rslora=True, use_dora=True,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"],
                        rank_pattern={"q_proj": 64}, lora_dropout=0.0, learning_rate=1e-4),
    # what export_sweep reads from a sweep: its steps and the engine's optimizer settings
    "sweep": dict(r=8, lora_alpha=16, use_rslora=False, use_dora=False, target_modules=["q_proj", "v_proj"],
                  learning_rate=3e-4, micro_batch_size=8, gradient_accumulation_steps=1, seq_len=512, max_steps=200,
                  schedule="cosine", warmup_ratio=0.03, max_grad_norm=1.0, weight_decay=0.01),
}


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from conftest import TINY_CONFIGS

    from loradial.models.resolve import inspect_model

    d = tmp_path_factory.mktemp("tiny-llama")
    (d / "config.json").write_text(json.dumps({**TINY_CONFIGS["llama"], "architectures": ["LlamaForCausalLM"]}))
    return inspect_model(str(d))


@pytest.mark.parametrize("fmt", FORMATS)
def test_alpha_is_always_explicit(fmt):
    doc = export_config(CONFIGS["standard"], fmt).document
    flat = json.dumps(doc)
    assert '"lora_alpha": 32' in flat


def test_peft_output_wraps_a_tiny_model():
    import peft
    import torch
    from conftest import TINY_CONFIGS
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(TINY_CONFIGS["llama"])
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    doc = json.loads(export_config(CONFIGS["standard"], "peft").text)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(**doc))
    n = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    # all-linear on 2 layers: q,k,v,o (32->32, 32->16 x2, 32->32) + gate,up (32->64), down (64->32), r=16
    per_layer = 16 * ((32 + 32) + (32 + 16) * 2 + (32 + 32) + (32 + 64) * 2 + (64 + 32))
    assert n == 2 * per_layer
    assert torch.isfinite(wrapped(torch.tensor([[1, 2, 3]])).logits).all()


def test_inexpressible_features_are_warnings():
    c = CONFIGS["rslora_dora"]
    for fmt in ("trl", "llamafactory", "torchtune"):
        assert any("rank_pattern" in w for w in export_config(c, fmt).warnings), fmt
    assert not export_config(c, "peft").warnings
    ax = export_config(c, "axolotl")  # axolotl >= 0.19 forwards lora_rank_pattern to PEFT's rank_pattern
    assert ax.document["lora_rank_pattern"] == {"q_proj": 64} and not any("rank_pattern" in w for w in ax.warnings)
    tt = export_config(c, "torchtune")
    assert tt.document["model"]["lora_alpha"] == pytest.approx(64 * 128 ** 0.5, rel=1e-6)
    assert any("no rsLoRA" in w for w in tt.warnings)
    assert any("all MLP projections or none" in w for w in tt.warnings)
    assert tt.document["model"]["lora_attn_modules"] == ["q_proj", "k_proj", "v_proj", "output_proj"]
    un = export_config(c, "unsloth")
    assert un.document["get_peft_model"]["use_dora"] is True
    assert any("**kwargs" in w for w in un.warnings)


def test_integer_alpha_tools_round_with_a_warning():
    c = dict(CONFIGS["standard"], lora_alpha=5.5)
    ax = export_config(c, "axolotl")
    assert ax.document["lora_alpha"] == 6 and any("rounded" in w for w in ax.warnings)
    assert export_config(c, "peft").document["lora_alpha"] == 5.5


def test_model_names_expand_targets(tiny_llama):
    c = dict(CONFIGS["standard"], model=None)
    un = export_config(c, "unsloth", info=tiny_llama)
    assert un.document["get_peft_model"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert not un.warnings
    lf = export_config(dict(c, target_modules=r".*\.(q_proj|v_proj)"), "llamafactory", info=tiny_llama)
    assert lf.document["lora_target"] == "q_proj,v_proj" and lf.warnings
    with pytest.raises(LoradialError, match="regex"):
        export_config(dict(c, target_modules=r".*\.(q_proj|v_proj)"), "llamafactory")
    tt = export_config(dict(c, target_modules=["q_proj", "v_proj", "lm_head"]), "torchtune", info=tiny_llama)
    m = tt.document["model"]
    assert (m["lora_attn_modules"], m["apply_lora_to_mlp"], m["apply_lora_to_output"]) == (["q_proj", "v_proj"], False, True)


def test_bundled_model_name_becomes_hub_id():
    doc = export_config(dict(CONFIGS["standard"], model="llama-3.2-1b"), "trl").document
    assert doc["model_name_or_path"] == "meta-llama/Llama-3.2-1B"


def test_bad_input():
    with pytest.raises(LoradialError, match="unknown export format"):
        export_config(CONFIGS["standard"], "keras")
    with pytest.raises(LoradialError, match="lacks"):
        export_config({"r": 8}, "peft")
    with pytest.raises(LoradialError, match="positive integer"):
        export_config(dict(CONFIGS["standard"], r=0), "peft")


# --- sweep results ---------------------------------------------------------------------------------
def _sweep(tmp_path, best="r16-a32-rslora-lr2e-4", settings=None):
    d = tmp_path / "sweep"
    d.mkdir()
    (d / "results.json").write_text(json.dumps({
        "best": best,
        "configs": [
            {"name": "r16-a32-rslora-lr2e-4", "r": 16, "lora_alpha": 32, "variant": "rslora", "target_modules": "all-linear",
             "learning_rate": 2e-4, "best_eval_loss": 1.2, "trainable_params": 1000},
            {"name": "r8-a8-dora-lr1e-4", "r": 8, "lora_alpha": 8, "use_rslora": False, "use_dora": True,
             "target_modules": ["q_proj", "v_proj"], "learning_rate": 1e-4, "best_eval_loss": 1.3},
        ],
        "settings": {"max_len": 512, "batch_size": 4, "steps": 300, "epochs": None, **(settings or {})},
    }))
    return d


def test_export_sweep_best_and_named(tmp_path):
    d = _sweep(tmp_path)
    res = export_sweep(d, "axolotl", out=tmp_path / "lora.yaml")
    doc = yaml.safe_load((tmp_path / "lora.yaml").read_text())
    assert doc == res.document
    assert (doc["lora_r"], doc["lora_alpha"], doc["peft_use_rslora"], doc["lora_target_linear"]) == (16, 32, True, True)
    assert doc["micro_batch_size"] == 4 and doc["sequence_len"] == 512
    named = export_sweep(d / "results.json", "peft", name="r8-a8-dora-lr1e-4").document
    assert (named["r"], named["use_dora"], named["target_modules"]) == (8, True, ["q_proj", "v_proj"])


def test_export_sweep_errors(tmp_path, cli):
    with pytest.raises(LoradialError, match="no results.json"):
        export_sweep(tmp_path, "peft")
    d = _sweep(tmp_path, best=None)
    with pytest.raises(LoradialError, match="names no best"):
        export_sweep(d, "peft")
    with pytest.raises(LoradialError, match="no config named"):
        export_sweep(d, "peft", name="nope")
    code, out, err = cli("export", d, "--format", "peft")
    assert code == 2 and out == "" and "names no best" in err


def test_cli_export_prints_document_and_warnings(tmp_path, cli):
    d = _sweep(tmp_path)
    code, out, err = cli("export", d, "--best", "--format", "torchtune")
    assert code == 0
    assert yaml.safe_load(out)["model"]["lora_rank"] == 16
    assert "no rsLoRA" in err
    code, out, err = cli("export", d, "--format", "trl", "--json")
    assert code == 0 and json.loads(out)["document"]["lora_r"] == 16
    code, out, err = cli("export", d, "--format", "keras")
    assert code == 2 and "unknown export format" in err


@pytest.mark.parametrize("train", [None, {"schedule": "linear", "warmup_steps": 7, "weight_decay": 0.1, "max_grad_norm": 0.5}])
def test_export_sweep_writes_the_schedule_the_winner_trained_under(tmp_path, train):
    """Steps, schedule, warmup, clipping and weight decay are those the sweep's engine used, in each tool's keys."""
    from loradial.engine import AdapterConfig
    from loradial.sweeps.setup import adapter_configs

    d = _sweep(tmp_path, settings={"train": train} if train else None)
    from loradial.settings import SweepConfigEntry, SweepSettings, TrainSettings, migrate

    settings = migrate({**json.loads((d / "results.json").read_text())["settings"], "loradial_sweep": 1})
    entry = SweepConfigEntry(name="x", r=16, lora_alpha=32.0, variant="rslora", use_rslora=True, use_dora=False,
                             targets="all-linear", target_modules="all-linear", learning_rate=2e-4, trainable_params=0)
    sweep = SweepSettings.model_construct(train=TrainSettings(**settings["train"]), configs=[entry])
    eng: AdapterConfig = adapter_configs(sweep, ["x"])[0]  # what the sweep trained with
    want = {"max_steps": 300, "warmup_steps": eng.warmup(300), "max_grad_norm": eng.max_grad_norm,
            "weight_decay": eng.weight_decay, "gradient_accumulation_steps": 1}
    sched = {"cosine": "cosine", "linear": "linear"}[eng.schedule]
    hf = {**want, "lr_scheduler_type": sched, "per_device_train_batch_size": 4, "learning_rate": 2e-4}
    for fmt in ("trl", "llamafactory"):
        doc = export_sweep(d, fmt).document
        assert {k: doc[k] for k in hf} == hf and "warmup_ratio" not in doc and "num_train_epochs" not in doc, fmt
    assert export_sweep(d, "unsloth").document["training_args"] == hf
    ax = export_sweep(d, "axolotl").document
    assert {k: ax[k] for k in want} == want and (ax["lr_scheduler"], ax["micro_batch_size"]) == (sched, 4)
    tt = export_sweep(d, "torchtune")
    assert (tt.document["max_steps_per_epoch"], tt.document["clip_grad_norm"]) == (300, eng.max_grad_norm)
    assert tt.document["optimizer"]["weight_decay"] == eng.weight_decay
    if eng.schedule == "cosine":
        assert tt.document["lr_scheduler"]["num_warmup_steps"] == eng.warmup(300) == 9  # ceil(0.03 * 300)
    else:
        assert "lr_scheduler" not in tt.document and any("lr_scheduler not written" in w for w in tt.warnings)
    import transformers  # the HF-Trainer tools' keys load in the installed TrainingArguments

    args = transformers.TrainingArguments(output_dir=str(tmp_path / "o"), **export_sweep(d, "unsloth").document["training_args"])
    assert (args.max_steps, args.get_warmup_steps(300), args.lr_scheduler_type.value) == (300, eng.warmup(300), sched)


def test_export_omits_settings_the_source_lacks():
    doc = export_config(CONFIGS["rslora_dora"], "trl").document
    assert not {"max_steps", "num_train_epochs", "lr_scheduler_type", "warmup_steps", "warmup_ratio",
                "max_grad_norm", "weight_decay"} & set(doc)
    epochs = export_config(dict(CONFIGS["rslora_dora"], epochs=2.0, warmup_ratio=0.05), "axolotl").document
    assert (epochs["num_epochs"], epochs["warmup_ratio"]) == (2.0, 0.05) and "max_steps" not in epochs


def test_export_sweep_carries_grad_accum_checkpointing_and_dropout(tmp_path):
    d = _sweep(tmp_path, settings={"grad_accum": 4, "gradient_checkpointing": True, "dropout": 0.05})
    doc = export_sweep(d, "axolotl", out=tmp_path / "lora.yaml").document
    assert (doc["micro_batch_size"], doc["gradient_accumulation_steps"], doc["gradient_checkpointing"]) == (4, 4, True)
    assert doc["lora_dropout"] == 0.05
    trl = export_sweep(d, "trl", out=tmp_path / "trl.yaml").document
    assert (trl["per_device_train_batch_size"], trl["gradient_accumulation_steps"], trl["lora_dropout"]) == (4, 4, 0.05)


@pytest.mark.parametrize("four_bit", [False, True])
def test_export_replays_the_base_precision_the_sweep_measured(tmp_path, four_bit):
    """Unsloth loads in 4-bit unless told not to: load_in_4bit is always written, as the sweep ran."""
    d = _sweep(tmp_path, settings={"train": {"load_in_4bit": True}} if four_bit else None)
    un = export_sweep(d, "unsloth").document
    assert un["from_pretrained"]["load_in_4bit"] is four_bit
    ax = export_sweep(d, "axolotl").document
    assert (ax["adapter"], ax.get("load_in_4bit", False)) == ("qlora" if four_bit else "lora", four_bit)
    assert export_sweep(d, "llamafactory").document.get("quantization_bit") == (4 if four_bit else None)
    assert export_sweep(d, "trl").document.get("load_in_4bit", False) is four_bit
    assert export_config(CONFIGS["standard"], "unsloth").document["from_pretrained"]["load_in_4bit"] is False


def test_axolotl_alpha_pattern_is_integer_with_a_warning():
    c = dict(CONFIGS["rslora_dora"], alpha_pattern={"q_proj": 12.5})
    ax = export_config(c, "axolotl")
    assert ax.document["lora_alpha_pattern"] == {"q_proj": 12} or ax.document["lora_alpha_pattern"] == {"q_proj": 13}
    assert any("alpha_pattern 'q_proj'" in w and "rounded" in w for w in ax.warnings)
