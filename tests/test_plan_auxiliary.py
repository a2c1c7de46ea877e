"""plan counts what PEFT trains besides LoRA factors exactly as ``get_nb_trainable_parameters`` does:
``modules_to_save`` copies, ``trainable_token_indices`` rows, ``target_parameters`` (ParamWrapper) and ``bias``.

Same oracle as test_plan_peft.py: ``get_peft_model`` on a meta-device build of a tiny config of each family;
PEFT's (trainable, all) must equal (plan's trainable_params, base total + the new parameters), and where PEFT
raises, plan raises a LoradialError.
"""

from __future__ import annotations

import warnings

import peft
import pytest

from loradial.cost.planning import make_spec, plan, targeting, auxiliary_total
from loradial.cost.params import trainable_params
from loradial.errors import LoradialError
from loradial.models import resolve as models
from test_plan_peft import tiny_config

TIED = {"tie_word_embeddings": True}

# (family, config overrides, targets, plan keyword arguments)
CASES = {
    "mts_head": ("llama", {}, "q_proj,v_proj", dict(modules_to_save=["lm_head"])),
    "mts_head_tied": ("llama", TIED, "q_proj,v_proj", dict(modules_to_save="lm_head")),
    "mts_embed_and_norm": ("llama", {}, "q_proj", dict(modules_to_save=["embed_tokens", "norm"])),
    "mts_container": ("llama", {}, "q_proj", dict(modules_to_save=["layers.1.mlp"])),
    "mts_gpt2_head_tied": ("gpt2", {}, "c_attn", dict(modules_to_save=["lm_head"])),
    "mts_qwen2_biased": ("qwen2", {}, "q_proj", dict(modules_to_save=["o_proj", "lm_head"])),
    "tokens_list": ("llama", {}, "q_proj,v_proj", dict(trainable_token_indices="0-4,9")),
    "tokens_tied": ("llama", TIED, "q_proj,v_proj", dict(trainable_token_indices=[1, 2, 3])),
    "tokens_dict_same_tied": ("llama", TIED, "q_proj", dict(trainable_token_indices={"embed_tokens": [1, 2],
                                                                                     "lm_head": [1, 2]})),
    "tokens_dict_differ_tied": ("llama", TIED, "q_proj", dict(trainable_token_indices='{"embed_tokens": [1, 2], '
                                                                                      '"lm_head": [3]}')),
    "tokens_head_only": ("llama", {}, "q_proj", dict(trainable_token_indices={"lm_head": [5, 6, 7]})),
    "tokens_gpt2": ("gpt2", {}, "c_attn", dict(trainable_token_indices=[1, 2])),
    "tokens_and_mts": ("llama", {}, "q_proj", dict(trainable_token_indices=[1, 2], modules_to_save=["lm_head"])),
    "params_linear": ("llama", {}, "q_proj", dict(target_parameters=["mlp.up_proj.weight"])),
    "params_only": ("llama", {}, "none", dict(target_parameters="down_proj.weight,o_proj.weight")),
    "params_rank_pattern": ("llama", {}, "q_proj", dict(target_parameters=["mlp.up_proj.weight"],
                                                       rank_pattern={r".*\.up_proj\.weight": 3})),
    "params_qwen3_moe": ("qwen3_moe", {}, "q_proj", dict(target_parameters=["mlp.experts.gate_up_proj"])),
    "params_mixtral_converted_plus": ("mixtral", {}, "q_proj,w1,w2,w3", dict(target_parameters=["self_attn.o_proj.weight"])),
    "params_mixtral_all_linear_clash": ("mixtral", {}, "all-linear", dict(target_parameters=["self_attn.o_proj.weight"])),
    "bias_lora_only": ("qwen2", {}, "q_proj,v_proj,o_proj", dict(bias="lora_only")),
    "bias_all_qwen2": ("qwen2", {}, "q_proj", dict(bias="all")),
    "bias_all_gpt2": ("gpt2", {}, "c_attn", dict(bias="all")),
    "everything": ("llama", {}, "q_proj,v_proj", dict(modules_to_save=["lm_head"], trainable_token_indices=[3, 4],
                                                      target_parameters=["mlp.down_proj.weight"])),
    # where PEFT raises, plan raises
    "tokens_on_lora_embedding": ("llama", {}, "embed_tokens,q_proj", dict(trainable_token_indices=[1])),
    "params_on_lora_module": ("llama", {}, "q_proj,up_proj", dict(target_parameters=["mlp.up_proj.weight"])),
    "params_with_dora": ("llama", {}, "q_proj", dict(target_parameters=["mlp.up_proj.weight"], use_dora=True)),
}


def _peft(cfg: dict, kwargs: dict) -> tuple[int, int] | str:
    model = models.build_meta_model(cfg)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pm = peft.get_peft_model(model, peft.LoraConfig(**kwargs), low_cpu_mem_usage=True)
    except (ValueError, TypeError, RuntimeError, AttributeError):
        return "error"
    return pm.get_nb_trainable_parameters()


@pytest.mark.parametrize("case", list(CASES))
def test_counts_equal_peft(case):
    fam, overrides, targets, kw = CASES[case]
    cfg = {**tiny_config(fam), **overrides}
    info = models.model_info_from_config(cfg, fam)
    want = _peft(cfg, make_spec(info, targets, 4, **kw).peft_kwargs()) if _builds(info, targets, kw) else "error"
    try:
        spec = make_spec(info, targets, 4, **kw)
        _, pairs, aux = targeting(spec, info)
        n = trainable_params(pairs, spec.use_dora, spec.lora_bias) + auxiliary_total(aux)
    except LoradialError:
        assert want == "error", f"PEFT counts {want}"
        return
    assert want != "error", f"PEFT raises but plan counted {n}"
    new_params = n - aux.get("bias", 0)  # trained base biases are not new parameters
    assert (n, info.total_params + new_params) == want, (aux, spec.peft_kwargs())
    row = plan(info, 4, targets, **kw).rows[0]
    assert row.trainable_params == n and row.auxiliary_params == aux


def _builds(info, targets, kw) -> bool:
    try:
        make_spec(info, targets, 4, **kw)
        return True
    except LoradialError:
        return False


def test_the_issue_example():
    """Issue 15: modules_to_save=['lm_head'] on a tiny llama, 1,792 LoRA parameters vs PEFT's 263,936 in all."""
    cfg = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=8192, max_position_embeddings=128, tie_word_embeddings=False)
    info = models.model_info_from_config(cfg, "tiny")
    row = plan(info, 8, "q_proj,v_proj", modules_to_save=["lm_head"]).rows[0]
    want = _peft(cfg, row.peft_config)
    assert row.trainable_params == want[0]
    assert row.auxiliary_params == {"modules_to_save": {"lm_head": 8192 * 32}}


def test_parsing_errors():
    info = models.model_info_from_config(tiny_config("llama"), "llama")
    for kw, msg in ((dict(modules_to_save="nothing_like_this"), "match no module"),
                    (dict(trainable_token_indices="a-b"), "invalid token indices"),
                    (dict(trainable_token_indices='{"embed_tokens": [1,'), "not valid JSON"),
                    (dict(trainable_token_indices={"no_such_layer": [1]}), "matches no module"),
                    (dict(target_parameters="no.such.param"), "match no parameter"),
                    (dict(bias="some"), "bias must be")):
        with pytest.raises(LoradialError, match=msg):
            plan(info, 4, "q_proj", **kw)
    with pytest.raises(LoradialError, match="no target"):
        plan(info, 4, "none")
