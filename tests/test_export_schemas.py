"""Every export is read by the tool it is for, not compared with a copy of our own output.

* PEFT and TRL are test dependencies: ``peft.LoraConfig(**doc)`` and TRL's own ``TrlParser`` (what
  ``trl sft --config FILE`` runs) parse every export, and TRL's ``get_peft_config`` builds the LoraConfig.
* axolotl, LLaMA-Factory, torchtune and Unsloth cannot be installed beside this HF stack (each pins
  other transformers/peft/trl releases, or needs a GPU at import). Every export is checked against
  their field lists in tests/data/schemas/ (read from the released packages by extract.py: version,
  file hashes and source in each file). Where the tool does import (e.g. unpacked with
  ``pip install --no-deps --target`` and put on PYTHONPATH), its own parser runs too: axolotl's
  ``AxolotlInputConfig`` and the LoraConfig its loader builds, LLaMA-Factory's argument parser,
  torchtune's ``config.validate``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from loradial.advice.export import export_config

SCHEMAS = Path(__file__).parent / "data" / "schemas"

CONFIGS = {
    "standard": dict(r=16, lora_alpha=32, use_rslora=False, use_dora=False, target_modules="all-linear",
                     lora_dropout=0.05, learning_rate=2e-4, micro_batch_size=4, gradient_accumulation_steps=4,
                     gradient_checkpointing=True, seq_len=2048, model="meta-llama/Llama-3.1-8B"),
    "patterns": dict(r=128, lora_alpha=64, use_rslora=True, use_dora=True,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"],
                     rank_pattern={"q_proj": 64, r"layers\.0\.self_attn\.v_proj": 8}, alpha_pattern={"q_proj": 32},
                     lora_dropout=0.0, learning_rate=1e-4),
    "sweep": dict(r=8, lora_alpha=16, use_rslora=False, use_dora=False, target_modules=["q_proj", "v_proj"],
                  learning_rate=3e-4, micro_batch_size=8, gradient_accumulation_steps=1, seq_len=512, max_steps=200,
                  schedule="cosine", warmup_ratio=0.03, max_grad_norm=1.0, weight_decay=0.01, load_in_4bit=False),
    "qlora": dict(r=8, lora_alpha=16, use_rslora=False, use_dora=False, target_modules="all-linear",
                  learning_rate=1e-4, micro_batch_size=2, seq_len=256, max_steps=10, load_in_4bit=True,
                  model="meta-llama/Llama-3.2-1B"),
}
CASES = sorted(CONFIGS)


def schema(tool: str) -> dict:
    return json.loads((SCHEMAS / f"{tool}.json").read_text())


_TYPES = {bool: ("bool",), int: ("int", "float", "PositiveInt", "Gt"), float: ("float",), str: ("str", "Literal", "Enum", "Type"),
          dict: ("dict",), list: ("list",)}


def _type_ok(value, annotation: str) -> bool:
    """A value fits an annotation string if the annotation names its basic type (or names no basic type
    at all: an enum or a class we cannot judge from the text)."""
    names = set(re.findall(r"[A-Za-z_]+", annotation))
    basic = {"bool", "int", "float", "str", "dict", "list", "Literal", "PositiveInt"}
    if not names & basic:
        return True
    if isinstance(value, bool):
        return "bool" in names
    return any(t in names or t in annotation for t in _TYPES[type(value)])


def _check_fields(doc: dict, fields: dict, tool: str) -> None:
    unknown = sorted(set(doc) - set(fields))
    assert not unknown, f"{tool} has no field {unknown}"
    for k, v in doc.items():
        assert _type_ok(v, fields[k]), f"{tool}: {k}={v!r} does not fit {fields[k]}"


def _doc(fmt: str, case: str) -> dict:
    res = export_config(CONFIGS[case], fmt)
    parsed = yaml.safe_load(res.text) if fmt not in ("peft", "unsloth") else json.loads(res.text)
    assert parsed == res.document  # what is written is what is described
    return res.document


# --- field lists of the released tools (always) ------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_axolotl_keys_are_axolotl_fields(case):
    s = schema("axolotl")
    doc = _doc("axolotl", case)
    _check_fields(doc, s["fields"], "axolotl")
    c = CONFIGS[case]
    assert doc["lora_alpha"] == c["lora_alpha"]
    assert doc.get("lora_rank_pattern") == c.get("rank_pattern")
    assert doc.get("lora_alpha_pattern") == c.get("alpha_pattern")
    assert (doc["adapter"], doc.get("load_in_4bit", False)) == (("qlora", True) if c.get("load_in_4bit") else ("lora", False))


@pytest.mark.parametrize("case", CASES)
def test_llamafactory_keys_are_llamafactory_arguments(case):
    s = schema("llamafactory")
    doc = _doc("llamafactory", case)
    _check_fields(doc, s["fields"], "LLaMA-Factory")
    assert doc.get("quantization_bit") == (4 if CONFIGS[case].get("load_in_4bit") else None)


@pytest.mark.parametrize("case", CASES)
def test_torchtune_keys_are_recipe_and_builder_keys(case):
    s = schema("torchtune")
    doc = _doc("torchtune", case)
    assert set(doc) <= set(s["recipe_keys"]), set(doc) - set(s["recipe_keys"])
    assert set(doc["model"]) <= set(s["model"]), set(doc["model"]) - set(s["model"])
    assert set(doc["optimizer"]) <= {"lr", "weight_decay"} <= set(s["optimizer"])
    if "lr_scheduler" in doc:
        assert set(doc["lr_scheduler"]) - {"_component_"} <= set(s["lr_scheduler"])


@pytest.mark.parametrize("case", CASES)
def test_unsloth_keys_are_its_parameters_or_lora_config_fields(case):
    import peft
    import transformers

    s = schema("unsloth")
    assert s["from_pretrained"]["parameters"]["load_in_4bit"] == "True"  # why the export always writes it
    doc = _doc("unsloth", case)
    fp = doc["from_pretrained"]
    assert set(fp) <= set(s["from_pretrained"]["parameters"])
    assert fp["load_in_4bit"] is bool(CONFIGS[case].get("load_in_4bit"))
    kwargs = doc["get_peft_model"]
    extra = {k: v for k, v in kwargs.items() if k not in s["get_peft_model"]["parameters"]}
    assert set(extra) <= {"use_dora", "rank_pattern", "alpha_pattern"}  # its **kwargs go to peft.LoraConfig
    lora_keys = {k: v for k, v in kwargs.items() if k not in ("use_gradient_checkpointing",)}
    cfg = peft.LoraConfig(**lora_keys)
    assert (cfg.r, cfg.lora_alpha, cfg.rank_pattern, cfg.alpha_pattern) == \
        (CONFIGS[case]["r"], CONFIGS[case]["lora_alpha"], CONFIGS[case].get("rank_pattern", {}), CONFIGS[case].get("alpha_pattern", {}))
    if "training_args" in doc:
        transformers.TrainingArguments(output_dir="unused", **doc["training_args"])


# --- the tools' own parsers ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_peft_parses_the_peft_export(case):
    import peft

    cfg = peft.LoraConfig(**_doc("peft", case))
    c = CONFIGS[case]
    assert (cfg.r, cfg.lora_alpha, cfg.use_rslora, cfg.use_dora) == (c["r"], c["lora_alpha"], c["use_rslora"], c["use_dora"])
    assert (cfg.rank_pattern, cfg.alpha_pattern) == (c.get("rank_pattern", {}), c.get("alpha_pattern", {}))


@pytest.mark.parametrize("case", CASES)
def test_trl_parses_the_trl_export(case, tmp_path):
    """``trl sft --config FILE`` parses the file with TrlParser((SFTConfig, ModelConfig)); unknown keys fail."""
    import trl
    from trl import TrlParser

    res = export_config(CONFIGS[case], "trl")
    path = tmp_path / "trl.yaml"
    path.write_text(res.text)
    parser = TrlParser((trl.SFTConfig, trl.ModelConfig))
    sft, model = parser.parse_args_and_config(["--config", str(path), "--output_dir", str(tmp_path / "o"), "--bf16", "false"])
    c = CONFIGS[case]
    peft_cfg = trl.get_peft_config(model)
    assert (peft_cfg.r, peft_cfg.lora_alpha, peft_cfg.use_rslora, peft_cfg.use_dora) == \
        (c["r"], c["lora_alpha"], c["use_rslora"], c["use_dora"])
    assert sft.learning_rate == c["learning_rate"]
    assert model.load_in_4bit is bool(c.get("load_in_4bit"))
    if c.get("max_steps"):
        assert sft.max_steps == c["max_steps"]


@pytest.fixture(scope="module")
def tiny_model():
    from conftest import TINY_CONFIGS
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(TINY_CONFIGS["llama"])
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))


@pytest.mark.parametrize("case", CASES)
def test_axolotl_own_parser_and_lora_builder(case, tiny_model):
    config_mod = pytest.importorskip("axolotl.utils.schemas.config", reason="axolotl does not install beside this HF stack")
    adapter_mod = pytest.importorskip("axolotl.loaders.adapter")
    from axolotl.utils.dict import DictDefault
    import peft

    doc = _doc("axolotl", case)
    cfg = config_mod.AxolotlInputConfig(**{"base_model": "some/model", **doc}, datasets=[{"path": "data.jsonl", "type": "alpaca"}], output_dir="out")
    lora = adapter_mod._build_peft_lora_config(tiny_model, DictDefault(cfg.model_dump(exclude_none=True)))
    ours = peft.LoraConfig(**_doc("peft", case))
    for key in ("r", "lora_alpha", "use_rslora", "use_dora", "rank_pattern", "alpha_pattern"):
        assert getattr(lora, key) == getattr(ours, key), key
    want = ours.target_modules
    if want == "all-linear":
        want = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert set(lora.target_modules) == set(want)


@pytest.mark.parametrize("case", CASES)
def test_llamafactory_own_parser(case, tmp_path, monkeypatch):
    monkeypatch.setenv("DISABLE_VERSION_CHECK", "1")  # it pins transformers<=5.6; only its argument parser runs here
    parser = pytest.importorskip("llamafactory.hparams.parser", reason="LLaMA-Factory does not install beside this HF stack")
    doc = _doc("llamafactory", case)
    model_args, data_args, train_args, ft_args, _ = parser._parse_train_args({"model_name_or_path": "some/model", **doc, "output_dir": str(tmp_path)})
    c = CONFIGS[case]
    assert (ft_args.finetuning_type, ft_args.lora_rank, ft_args.lora_alpha) == ("lora", c["r"], c["lora_alpha"])
    assert (ft_args.use_rslora, ft_args.use_dora, train_args.learning_rate) == (c["use_rslora"], c["use_dora"], c["learning_rate"])
    assert model_args.quantization_bit == (4 if c.get("load_in_4bit") else None)


@pytest.mark.parametrize("case", CASES)
def test_torchtune_config_validate(case):
    config = pytest.importorskip("torchtune.config", reason="torchtune does not install beside this HF stack")
    import torchtune
    from omegaconf import OmegaConf

    recipe = Path(torchtune.__file__).parents[1] / "recipes/configs/llama3_2/1B_lora_single_device.yaml"
    base = OmegaConf.load(recipe)
    doc = _doc("torchtune", case)
    doc["model"]["_component_"] = "torchtune.models.llama3_2.lora_llama3_2_1b"
    merged = OmegaConf.merge(base, OmegaConf.create(doc))
    config.validate(merged)
    assert merged.model.lora_rank == CONFIGS[case]["r"]


def test_schemas_name_their_release():
    for tool in ("axolotl", "llamafactory", "torchtune", "unsloth"):
        s = schema(tool)
        assert s["version"] and s["files"] and "pypi.org/project" in s["source"], tool
    assert "lora_rank_pattern" in schema("axolotl")["fields"] and "lora_alpha_pattern" in schema("axolotl")["fields"]


def test_tools_really_ran_when_asked():
    """CI sets nothing here; a developer who put the tools on PYTHONPATH can demand that none was skipped."""
    if not os.environ.get("LORADIAL_REQUIRE_TOOLS"):
        pytest.skip("set LORADIAL_REQUIRE_TOOLS=1 with the tools on PYTHONPATH")
    import importlib

    for mod in ("axolotl.utils.schemas.config", "llamafactory.hparams.parser", "torchtune.config"):
        importlib.import_module(mod)
