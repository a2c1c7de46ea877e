"""Target resolution: the fast Matcher equals LoraSpec.matches, presets, exact name lists, PEFT's MoE table."""

from __future__ import annotations

import itertools

import pytest

from loradial.models import resolve as models
from loradial.errors import LoradialError
from loradial.spec import LoraSpec
from loradial.models.targets import MOE_CONVERTED, Matcher, exact_names, match, preset_targets, resolve_targets

NAMES = [
    "model.embed_tokens", "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
    "model.layers.1.self_attn.q_proj", "model.layers.11.mlp.down_proj", "model.layers.2.mlp.experts.3.gate_proj",
    "transformer.h.0.attn.c_attn", "transformer.h.3.mlp.c_proj", "transformer.h.3.attn.c_proj",
    "encoder.layer.0.attention.output.dense", "encoder.layer.5.output.dense", "q_proj", "lm_head", "model.layers.0",
]
TARGETS = [["q_proj", "v_proj"], ["self_attn.q_proj"], ["attn.c_proj", "c_attn"], ["output.dense"], ["dense"],
           r".*\.(q_proj|down_proj)", "all-linear", ["layers.0.self_attn.q_proj", "gate_proj"], []]
LAYERS = [None, [0], 1, [0, 2, 11], []]
EXCLUDES = [None, ["v_proj"], r".*layers\.1\..*"]


@pytest.mark.parametrize("targets,layers,pattern,exclude",
                         list(itertools.product(TARGETS, LAYERS, [None, "layers", ["h", "layer"]], EXCLUDES)))
def test_matcher_equals_spec_matches(targets, layers, pattern, exclude):
    spec = LoraSpec(r=4, target_modules=targets, layers_to_transform=layers, layers_pattern=pattern, exclude_modules=exclude)
    linear = [n for n in NAMES if n not in ("model.embed_tokens", "lm_head", "model.layers.0")]
    fast = Matcher(spec, linear)
    for name in NAMES:
        assert fast(name) == spec.matches(name, linear), name


def test_moe_conversion_table_is_peft_s():
    """Every model type MOE_CONVERTED lists, PEFT converts (with the same base) under the installed transformers,
    and our mappings are PEFT's for those bases: ours ⊆ theirs, so a newer PEFT or transformers that converts
    more types (transformers 5.25 added five) does not break the suite."""
    from peft.utils.transformers_weight_conversion import _MODEL_TO_CONVERSION_PATTERN, _MOE_FUSED_TARGETS, _MOE_TARGET_MODULE_MAPPING
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    from loradial.models.targets import _MOE_FUSED, _MOE_MAPPING

    theirs = {t: b for t, b in _MODEL_TO_CONVERSION_PATTERN.items()
              if b in _MOE_TARGET_MODULE_MAPPING and _MOE_FUSED_TARGETS.get(b) and get_checkpoint_conversion_mapping(t) is not None}
    assert MOE_CONVERTED.items() <= theirs.items(), {t: (b, theirs.get(t)) for t, b in MOE_CONVERTED.items() if theirs.get(t) != b}
    for base in _MOE_MAPPING:
        assert _MOE_MAPPING[base].items() <= _MOE_TARGET_MODULE_MAPPING[base].items(), base
    for base in _MOE_FUSED:
        assert _MOE_FUSED[base].items() <= _MOE_FUSED_TARGETS[base].items(), base


@pytest.fixture(scope="module")
def infos():
    return {name: models.inspect_model(name) for name in ("llama-2-7b", "gpt2", "roberta-base", "mixtral-8x7b",
                                                           "qwen2-57b-a14b", "phi-3-mini", "deberta-v2-xxlarge")}


def test_presets(infos):
    assert preset_targets("attention", infos["llama-2-7b"]) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert preset_targets("mlp", infos["llama-2-7b"]) == ["gate_proj", "up_proj", "down_proj"]
    assert preset_targets("attention", infos["gpt2"]) == ["c_attn", "attn.c_proj"]
    assert preset_targets("mlp", infos["gpt2"]) == ["c_fc", "mlp.c_proj"]
    assert preset_targets("attention", infos["phi-3-mini"]) == ["o_proj", "qkv_proj"]
    assert preset_targets("mlp", infos["roberta-base"]) == r".*\.\d+\.(?:intermediate\.dense|output\.dense)"
    listed = preset_targets("mlp", infos["roberta-base"], need_list=True)
    assert listed[:2] == ["intermediate.dense", "0.output.dense"] and len(listed) == 13
    assert preset_targets("mlp", infos["mixtral-8x7b"]) == ["w1", "w3", "w2"]  # PEFT's v4 names, converted
    assert preset_targets("mlp", infos["qwen2-57b-a14b"]) == ["gate_proj", "up_proj", "down_proj"]  # shared expert
    assert preset_targets("attention", infos["deberta-v2-xxlarge"]) == ["query_proj", "key_proj", "value_proj", "attention.output.dense"]


def test_exact_names_match_exactly_the_members(infos):
    info = infos["roberta-base"]
    members = [m.name for m in info.modules if m.name.endswith("output.dense")]
    names = exact_names(members, info)
    assert names == ["output.dense"]
    spec = LoraSpec(target_modules=names)
    assert [m.name for m in info.modules if spec.matches(m.name)] == members


def test_resolve_target_syntax(infos):
    info = infos["llama-2-7b"]
    assert resolve_targets("q_proj, v_proj", info) == ["q_proj", "v_proj"]
    assert resolve_targets("all-linear", info) == "all-linear"
    assert resolve_targets("ALL-LINEAR", info, need_list=True) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert resolve_targets(r"re:.*\.q_proj", info) == r".*\.q_proj"
    for bad, msg in (("", "empty target set"), (" , ", "empty target set"), ("re:(", "invalid"), ("re:.*", "layers_to_transform")):
        with pytest.raises(LoradialError, match=msg):
            resolve_targets(bad, info, need_list=bad == "re:.*")
    with pytest.raises(LoradialError, match="preset 'mlp' found no modules"):
        resolve_targets("mlp", models.ModelInfo("empty", "local", {"model_type": "x"}, [], 0, False))


def test_errors_name_what_exists(infos):
    info = infos["llama-2-7b"]
    with pytest.raises(LoradialError) as e:
        match(LoraSpec(target_modules=["qproj"]), info)
    assert "match no module" in e.value.message and "self_attn.q_proj" in e.value.hint and "mlp.down_proj" in e.value.hint
    with pytest.raises(LoradialError, match="cannot wrap"):
        match(LoraSpec(target_modules=["self_attn"]), info)
    with pytest.raises(LoradialError, match="cannot target w1 without w3"):
        match(LoraSpec(target_modules=["w1"]), infos["mixtral-8x7b"])


def test_moe_targeting_details(infos):
    info = infos["mixtral-8x7b"]
    tg = match(LoraSpec(r=8, target_modules=["w1", "w2", "w3"], layers_to_transform=[0], exclude_modules=["w2"]), info)
    assert sorted(tg.target_parameters) == ["down_proj", "gate_up_proj"]
    assert len(tg.targeted) == 2 * 32  # layers and exclude do not apply to ParamWrapper targets (as in PEFT)
    assert {r for m, r, _ in tg.targeted if m.name.endswith("gate_up_proj")} == {16}  # fused: 2r
    assert {a for m, _, a in tg.targeted if m.name.endswith("gate_up_proj")} == {16}  # and 2 * alpha
    user = match(LoraSpec(r=8, target_modules=["w1", "w3"], rank_pattern={"experts.gate_up_proj": 4}), info)
    assert {r for _, r, _ in user.targeted} == {4}  # a user key comes first and wins
    with pytest.raises(LoradialError, match="ParamWrapper"):
        match(LoraSpec(target_modules="all-linear", use_dora=True), info)


def test_unused_pattern_keys(infos):
    tg = match(LoraSpec(target_modules=["q_proj", "v_proj"], rank_pattern={"q_proj": 4, "k_proj": 2},
                        alpha_pattern={"nothing": 1.0}), infos["llama-2-7b"])
    assert tg.unused_pattern_keys == {"rank_pattern": ["k_proj"], "alpha_pattern": ["nothing"]}
