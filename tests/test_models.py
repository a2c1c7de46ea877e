"""Model resolution, `loradial models`, and the torch-free shapes fast path against the meta build."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loradial.models import resolve as models, shapes
from loradial.errors import LoradialError

BUNDLED = [e["name"] for e in models.bundled_index()]
SRC = str(Path(models.__file__).parents[1])


# --- resolution ----------------------------------------------------------------------------------
def test_bundled_name_and_hub_id_resolve_to_the_same_config():
    entry = models.bundled_index()[0]
    by_name, src1 = models.load_config_dict(entry["name"])
    by_id, src2 = models.load_config_dict(entry["hub_id"].upper())  # case-insensitive
    assert by_name == by_id and src1 == src2 == "bundled"


def test_local_directory_and_json_file(tmp_path):
    cfg = json.loads((models.CONFIG_DIR / "gpt2.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    info = models.inspect_model(str(tmp_path))
    assert info.source == "local" and info.model_type == "gpt2" and info.total_params == 124_439_808
    assert models.load_config_dict(str(tmp_path / "config.json"))[1] == "local"


def test_directory_without_config(tmp_path):
    with pytest.raises(LoradialError, match="no config.json"):
        models.load_config_dict(str(tmp_path))


def test_malformed_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(LoradialError, match="not valid JSON"):
        models.load_config_dict(str(tmp_path))
    (tmp_path / "config.json").write_text('["a list"]')
    with pytest.raises(LoradialError, match="no model_type"):
        models.load_config_dict(str(tmp_path))


def test_unknown_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no_such_arch", "hidden_size": 8}))
    with pytest.raises(LoradialError, match="unknown or malformed model_type 'no_such_arch'"):
        models.inspect_model(str(tmp_path))


def test_unknown_name_suggests_close_matches():
    with pytest.raises(LoradialError) as e:
        models.load_config_dict("llama-2-7")
    assert "unknown model" in e.value.message and "llama-2-7b" in e.value.hint


def test_hub_id_offline_is_a_clean_error():  # HF_HUB_OFFLINE=1 in conftest
    with pytest.raises(LoradialError, match="could not fetch config.json of 'nobody/not-a-model'"):
        models.load_config_dict("nobody/not-a-model")


def test_models_verb_lists_at_least_20(cli):
    code, out, err = cli("models", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["schema_version"] == 1 and len(doc["models"]) >= 20
    assert {"llama-2-7b", "gpt2", "mixtral-8x7b"} <= {m["name"] for m in doc["models"]}
    code, out, err = cli("models")
    assert code == 0 and out == "" and "llama-3.1-405b" in err


def test_every_index_entry_has_its_file():
    for e in models.bundled_index():
        assert (models.CONFIG_DIR / e["file"]).is_file(), e


# --- the fast path equals the meta build ---------------------------------------------------------------
def _assert_same(fast: models.ModelInfo, meta: models.ModelInfo) -> None:
    from loradial.cost.memory import model_shape

    assert fast.built_by == "shapes" and meta.built_by == "meta"
    assert model_shape(fast) == model_shape(meta)  # the memory model reads the same dims without transformers
    assert fast.modules == meta.modules  # names, kinds, shapes, biases, output head, experts, order
    assert fast.total_params == meta.total_params
    assert fast.tied_embeddings == meta.tied_embeddings
    assert fast.model_class == meta.model_class
    assert sorted(fast.other_modules) == sorted(meta.other_modules)


@pytest.mark.parametrize("name", BUNDLED)
def test_fast_path_equals_meta_build_for_every_bundled_config(name):
    cfg, source = models.load_config_dict(name)
    fast = shapes.model_info(name, source, cfg)
    assert fast is not None, f"{name}: no fast path for {cfg['model_type']}"
    _assert_same(fast, models.meta_model_info(name, source, cfg))


_TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, vocab_size=200,
             max_position_embeddings=64)
VARIANTS = [
    ("llama", dict(_TINY)),
    ("llama", dict(_TINY, num_key_value_heads=2, attention_bias=True, mlp_bias=True, tie_word_embeddings=True)),
    ("llama", dict(_TINY, head_dim=8)),
    ("mistral", dict(_TINY)),
    ("mistral", dict(_TINY, num_key_value_heads=4, head_dim=32)),
    ("qwen2", dict(_TINY, num_key_value_heads=2, tie_word_embeddings=True)),
    ("qwen3", dict(_TINY, num_key_value_heads=2)),
    ("qwen3", dict(_TINY, num_key_value_heads=2, head_dim=8, attention_bias=True)),
    ("gemma", dict(_TINY, num_key_value_heads=1)),
    ("gemma2", dict(_TINY, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False)),
    ("phi3", dict(_TINY, num_key_value_heads=2, pad_token_id=0)),
    ("mixtral", dict(_TINY, num_key_value_heads=2, num_local_experts=3)),
    ("qwen2_moe", dict(_TINY, num_key_value_heads=2, num_experts=4, moe_intermediate_size=16,
                       shared_expert_intermediate_size=48, decoder_sparse_step=2, mlp_only_layers=[2])),
    ("qwen2_moe", dict(_TINY, num_key_value_heads=2, num_experts=4, moe_intermediate_size=16, qkv_bias=False)),
    ("qwen3_moe", dict(_TINY, num_key_value_heads=2, num_experts=4, moe_intermediate_size=16, mlp_only_layers=[0])),
    ("gpt2", dict(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=40, n_inner=48, bos_token_id=0, eos_token_id=0)),
    ("roberta", dict(_TINY, type_vocab_size=1, architectures=["RobertaForMaskedLM"], pad_token_id=1)),
    ("deberta-v2", dict(_TINY, relative_attention=True, pos_att_type="c2p|p2c", share_att_key=False, position_buckets=8,
                        norm_rel_ebd="layer_norm", conv_kernel_size=3, type_vocab_size=2, pad_token_id=0)),
    ("deberta-v2", dict(_TINY, embedding_size=32, position_biased_input=True, pad_token_id=0)),
]


@pytest.mark.parametrize("model_type,cfg", VARIANTS, ids=[f"{t}-{i}" for i, (t, _) in enumerate(VARIANTS)])
def test_fast_path_equals_meta_build_for_config_variants(model_type, cfg):
    cfg = dict(cfg, model_type=model_type)
    fast = shapes.model_info("tiny", "local", cfg)
    assert fast is not None
    _assert_same(fast, models.meta_model_info("tiny", "local", cfg))


def test_unknown_family_or_head_falls_back_to_meta():
    assert shapes.model_info("x", "local", dict(_TINY, model_type="olmo2")) is None
    assert shapes.model_info("x", "local", dict(_TINY, model_type="llama", architectures=["LlamaForSequenceClassification"])) is None
    assert shapes.model_info("x", "local", dict(model_type="roberta")) is None  # no architectures: meta decides the class
    info = models.model_info_from_config(dict(_TINY, model_type="olmo2", num_key_value_heads=4))
    assert info.built_by == "meta" and info.linear_names


def test_list_modules_kinds_on_an_moe_and_a_conv():
    info = models.model_info_from_config(dict(VARIANTS[11][1], model_type="mixtral"), fast=False)
    params = [m for m in info.modules if m.kind == "param"]
    assert {m.name.split(".", 3)[-1] for m in params} == {"mlp.gate.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj"}
    gate_up = next(m for m in params if m.name.endswith("gate_up_proj"))
    assert (gate_up.experts, gate_up.d_in, gate_up.d_out) == (3, 64, 192)
    deb = models.model_info_from_config(dict(VARIANTS[17][1], model_type="deberta-v2"), fast=False)
    conv = next(m for m in deb.modules if m.kind == "conv")
    assert (conv.name, conv.d_in, conv.d_out) == ("encoder.conv.conv", 64 * 3, 64)


def test_import_and_fast_path_do_not_import_torch():
    code = (
        "import sys, loradial, loradial.cli\n"
        "from loradial.models.resolve import inspect_model\n"
        "inspect_model('llama-3.1-405b'); inspect_model('mixtral-8x7b')\n"
        "loradial.plan('qwen3-30b-a3b', [8], ['attention', 'mlp'])\n"
        "bad = [m for m in ('torch', 'transformers', 'peft', 'numpy') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1"})
