"""PEFT is the oracle: plan's counts equal ``get_nb_trainable_parameters()`` of ``get_peft_model``.

Two tiers, both on the meta device (PEFT's ``low_cpu_mem_usage`` keeps the adapters there too):
- tiny models of every bundled family (the bundled config with its dimensions shrunk), for a matrix of
  target sets x ranks x rank/alpha patterns, DoRA, lora_bias, layers_to_transform and exclude_modules;
- the bundled configs' real shapes, for the presets and all-linear.
Where PEFT raises, plan must raise a LoradialError too.
"""

from __future__ import annotations

import json
import warnings

import peft
import pytest

from loradial.models import resolve as models
from loradial.cost.params import trainable_params
from loradial.errors import LoradialError
from loradial.cost.planning import make_spec, plan
from loradial.models.targets import match

FAMILIES = {  # family -> bundled config it is shrunk from
    "llama": "llama-3.2-1b", "mistral": "mistral-7b-instruct-v0.3", "mixtral": "mixtral-8x7b", "qwen2": "qwen2.5-0.5b",
    "qwen3": "qwen3-8b", "qwen3_moe": "qwen3-30b-a3b", "qwen2_moe": "qwen2-57b-a14b", "gemma2": "gemma-2-2b",
    "phi3": "phi-3-mini", "gpt2": "gpt2", "roberta": "roberta-base", "deberta-v2": "deberta-v2-xxlarge",
}
SHRINK = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=160, max_position_embeddings=64, head_dim=16, num_local_experts=4, num_experts=4,
              num_experts_per_tok=2, moe_intermediate_size=24, shared_expert_intermediate_size=48, attention_head_size=16,
              position_buckets=8, n_embd=32, n_layer=3, n_head=4, n_positions=40, bos_token_id=0, eos_token_id=0,
              pad_token_id=0)
NAMES = {  # a family's own "q and v" list, and its input embedding
    "gpt2": ("c_attn", "wte"), "roberta": ("query,value", "word_embeddings"),
    "deberta-v2": ("query_proj,value_proj", "word_embeddings"), "phi3": ("qkv_proj", "embed_tokens"),
}


def tiny_config(family: str) -> dict:
    cfg, _ = models.load_config_dict(FAMILIES[family])
    return {**cfg, **{k: v for k, v in SHRINK.items() if k in cfg or k in ("head_dim", "pad_token_id")}}


def peft_count(cfg: dict, peft_kwargs: dict) -> tuple[int, int] | str:
    """(trainable, total) from PEFT on a meta-device build, or 'error'."""
    model = models.build_meta_model(cfg)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pm = peft.get_peft_model(model, peft.LoraConfig(**peft_kwargs), low_cpu_mem_usage=True)
    except (ValueError, TypeError, RuntimeError):
        return "error"
    return pm.get_nb_trainable_parameters()


def ours(info: models.ModelInfo, targets: str, r: int, **kw) -> tuple[tuple[int, int] | str, dict]:
    spec = make_spec(info, targets, r, **kw)
    try:
        n = trainable_params(match(spec, info).pairs, spec.use_dora, spec.lora_bias)
    except LoradialError:
        return "error", spec.peft_kwargs()
    return (n, info.total_params + n), spec.peft_kwargs()


def raw_peft_kwargs(info: models.ModelInfo, targets: str, r: int, *, alpha: float | None = None, layers=None,
                    layers_pattern=None, exclude: str | None = None, **flags) -> dict | None:
    """The LoraConfig a user would write for these inputs, built without any loradial check (PEFT judges it).
    Only the presets 'attention' / 'mlp' (and 'all-linear' with layers, which PEFT wants as a list) are
    loradial's own vocabulary and expand through it; None if such a preset names no module here."""
    from loradial.models.targets import ALL_LINEAR, PRESETS, preset_targets

    t = targets.strip()
    if t.lower() in PRESETS and (t.lower() != ALL_LINEAR or layers is not None):
        try:
            tm = preset_targets(t.lower(), info, layers is not None)
        except LoradialError:
            return None
        if not tm:
            return None
    elif t.lower() == ALL_LINEAR:
        tm = ALL_LINEAR
    elif t.startswith("re:"):
        tm = t[3:]
    else:
        tm = [x.strip() for x in t.split(",") if x.strip()]
    kw = dict(r=r, lora_alpha=alpha if alpha is not None else r, target_modules=tm, **flags)
    if layers is not None:
        kw["layers_to_transform"] = layers
    if layers_pattern is not None:
        kw["layers_pattern"] = layers_pattern
    if exclude is not None:
        kw["exclude_modules"] = exclude[3:] if exclude.startswith("re:") else [x.strip() for x in exclude.split(",")]
    return kw


def check(cfg: dict, info: models.ModelInfo, targets: str, r: int, **kw) -> None:
    """plan's count == PEFT's. Where loradial refuses to build the config, PEFT must refuse it too: the case
    is skipped only then (or when a loradial preset names no module of the family), never on loradial's word."""
    try:
        got, peft_kwargs = ours(info, targets, r, **kw)
    except LoradialError as e:
        raw = raw_peft_kwargs(info, targets, r, **kw)
        if raw is None:
            pytest.skip(f"preset {targets!r} names no module of this family")
        theirs = peft_count(cfg, raw)
        if theirs == "error":
            pytest.skip("PEFT cannot build this config either")
        pytest.fail(f"loradial refused ({e.message}) a config PEFT builds: {raw} -> {theirs}")
    assert got == peft_count(cfg, peft_kwargs), (targets, r, kw, peft_kwargs)


@pytest.fixture(scope="module")
def tiny():
    out = {}
    for fam in FAMILIES:
        cfg = tiny_config(fam)
        out[fam] = (cfg, models.model_info_from_config(cfg, fam))
    return out


def target_sets(fam: str) -> list[str]:
    qv, emb = NAMES.get(fam, ("q_proj,v_proj", "embed_tokens"))
    return ["all-linear", "attention", "mlp", qv, f"{emb},{qv.split(',')[0]}",
            r"re:.*\.(q_proj|v_proj|c_attn|query|value|qkv_proj|query_proj|value_proj|w1|w3|gate_proj|up_proj)",
            r"re:.*\.1\..*",  # matches containers: PEFT raises
            r"re:.*layers?\.1\.self_attn\.[qkvo]_proj|.*h\.1\.attn\.c_attn|.*layer\.1\.attention\.self\.query(_proj)?",
            "gate,o_proj"]  # the MoE router (a parameter after PEFT's conversion, a module error otherwise)


@pytest.mark.parametrize("fam", list(FAMILIES))
@pytest.mark.parametrize("which", range(9))
def test_target_sets_times_ranks(tiny, fam, which):
    cfg, info = tiny[fam]
    check(cfg, info, target_sets(fam)[which], (1, 3, 8, 16)[which % 4])


VARIANTS = {
    "rank_alpha_pattern": dict(rank_pattern={r"layers?\.0\..*": 2, "v_proj": 5, "value": 5, "c_attn": 3, "w2": 7,
                                             r".*\.experts\.down_proj": 6, "never_matches": 9},
                               alpha_pattern={"q_proj": 3.0}),
    "dora": dict(use_dora=True),
    "lora_bias": dict(lora_bias=True),
    "layers": dict(layers=[0, 2]),
    "exclude_list": dict(exclude="v_proj,value,c_fc,k_proj"),
    "exclude_regex": dict(exclude=r"re:.*\.1\..*"),
    "rslora_alpha": dict(use_rslora=True, alpha=32),
    "layers_pattern": dict(layers=1, layers_pattern="layers"),
}


@pytest.mark.parametrize("fam", list(FAMILIES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants(tiny, fam, variant):
    cfg, info = tiny[fam]
    sets = target_sets(fam)
    for targets in (sets[0], sets[2], sets[4]):  # all-linear, mlp, embedding + one linear
        check(cfg, info, targets, 4, **VARIANTS[variant])


REAL = ["llama-2-7b", "llama-3.2-1b", "mistral-7b-instruct-v0.3", "mixtral-8x7b", "qwen2.5-0.5b", "qwen3-8b",
        "qwen3-30b-a3b", "qwen2-57b-a14b", "gemma-2-2b", "phi-3-mini", "gpt2", "roberta-base", "deberta-v2-xxlarge"]


@pytest.mark.parametrize("name", REAL)
def test_real_shapes(name):
    cfg, _ = models.load_config_dict(name)
    info = models.inspect_model(name)
    assert info.built_by == "shapes"
    for targets, r in (("all-linear", 16), ("attention", 8), ("mlp", 64)):
        check(cfg, info, targets, r)


def test_design_goldens_llama_2_7b():
    """DESIGN.md: q_proj+v_proj r=8 -> 4,194,304; r=256 -> 134,217,728; all-linear r=16 -> 39,976,960."""
    res = plan("llama-2-7b", [8, 256], ["q_proj,v_proj"])
    assert [row.trainable_params for row in res.rows] == [4_194_304, 134_217_728]
    assert plan("llama-2-7b", 16, "all-linear").rows[0].trainable_params == 39_976_960


def test_plan_rows_reproduce_in_peft(tiny):
    """The row's peft_config, fed to PEFT, gives the row's count (what a user would copy)."""
    cfg, info = tiny["mixtral"]
    res = plan(info, [4, 8], ["attention", "mlp"], rank_pattern='{"q_proj": 2}')
    for row in res.rows:
        json.dumps(row.peft_config)
        assert peft_count(cfg, row.peft_config)[0] == row.trainable_params


def test_a_refusal_peft_does_not_share_fails_instead_of_skipping(tiny, monkeypatch):
    """The mutation this oracle exists for: loradial refusing every layers_to_transform once turned 24
    cases into skips. Now such a refusal fails the case; a refusal PEFT shares still skips."""
    import loradial.cost.planning as planning

    def refuse(*a, **k):
        raise LoradialError("layers_to_transform is not supported")

    monkeypatch.setattr(planning, "check_layers", refuse)
    cfg, info = tiny["llama"]
    with pytest.raises(pytest.fail.Exception, match="loradial refused .* a config PEFT builds"):
        check(cfg, info, "q_proj,v_proj", 4, layers=[0, 2])
    with pytest.raises(pytest.skip.Exception, match="PEFT cannot build this config either"):
        check(cfg, info, r"re:.*q_proj", 4, layers=[0, 2])  # PEFT: no layers_to_transform with a regex
