"""Every LoraConfig field, exact or refused: a suite of adapters PEFT itself made, run through every verb.

For each case PEFT builds the adapter (``get_peft_model`` on a tiny model from config, every trainable tensor
perturbed so that LoRA B, modules_to_save copies, token rows and biases all differ from their start,
``save_pretrained``). Then, per verb, either loradial's numbers equal PEFT's (the adapter loaded with
``PeftModel.from_pretrained`` is the oracle, ≤ 1e-5) or the CLI exits 2 naming the feature and writes nothing:

- analyze        singular values == svdvals of PEFT's get_delta_weight, per module
- analyze --data full / rank-0 eval loss == PEFT's loss at rescale_adapter_scale 1 / 0
- resize         PEFT's ΔW of the resized adapter == best rank-k of PEFT's ΔW; every other saved tensor kept
- rescale        PEFT's ΔW of the rescaled adapter == c · ΔW, and its logits == rescale_adapter_scale(c)
- alpha-sweep    loss at each c == PEFT's loss under rescale_adapter_scale(c)
- merge          merged model's logits == PEFT's logits == merge_and_unload's

A few configs cannot be produced on a CPU box (Megatron, LoftQ needs scipy + a quantized base, CorDA needs
its preprocessing, Arrow its routing model); those cases are a plain PEFT adapter whose adapter_config.json
says so (``SYNTH``): loradial's decision rests on the config alone.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
import zlib
from pathlib import Path

import numpy as np
import peft
import pytest
import torch
from peft.helpers import rescale_adapter_scale

from loradial.adapters import features
from loradial.adapters.analysis import analyze
from loradial.adapters.evaluate import alpha_sweep
from loradial.adapters.format import load_adapter
from loradial.adapters.surgery import merge, rescale, resize
from test_adapter_support import tiny_model
from test_engine_fixtures import pc_records, tiny_llama, tiny_tokenizer, write_jsonl

ALL = features.ADAPTER_VERBS
MODEL_VERBS = (features.DATA, features.ALPHA, features.MERGE)
QV = ["q_proj", "v_proj"]
TOKENS = [6, 7, 8, 9, 10]  # word ids that occur in the eval data
SEED_OFFSET = int(__import__("os").environ.get("LORADIAL_TEST_SEED", "0"))


@dataclasses.dataclass
class Case:
    lora: dict
    base: str = "llama"
    refused: tuple[str, ...] = ()
    """Verbs that must exit 2; every other verb must equal PEFT."""
    says: str = ""
    """What the refusal must name (default: the first field set in ``lora`` / ``synth``)."""
    synth: dict | None = None
    """Config fields written into adapter_config.json after PEFT saved it (see the module docstring)."""
    convert: bool = False
    """Save with path_initial_model_for_weight_conversion (PiSSA / OLoRA converted to plain LoRA)."""


CASES: dict[str, Case] = {
    # --- exact in every verb -------------------------------------------------------------------------------------
    "plain": Case(dict(r=4, lora_alpha=8, target_modules=QV)),
    "rslora_patterns_layers": Case(dict(r=4, lora_alpha=6, use_rslora=True, target_modules=["q_proj", "v_proj", "up_proj"],
                                        rank_pattern={"up_proj": 3}, alpha_pattern={"v_proj": 10}, layers_to_transform=[1],
                                        exclude_modules=["k_proj"])),
    "mts_head": Case(dict(r=4, lora_alpha=8, target_modules=QV, modules_to_save=["lm_head"])),
    "mts_head_tied": Case(dict(r=4, lora_alpha=8, target_modules=QV, modules_to_save=["lm_head"]), base="tied"),
    "mts_embed_tied": Case(dict(r=4, lora_alpha=8, target_modules=QV, modules_to_save=["embed_tokens"]), base="tied"),
    "mts_embed_tied_ewt": Case(dict(r=4, lora_alpha=8, target_modules=QV, modules_to_save=["embed_tokens"],
                                    ensure_weight_tying=True), base="tied"),
    "lora_embed_tied_ewt": Case(dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"],
                                     ensure_weight_tying=True), base="tied"),
    "tokens": Case(dict(r=4, lora_alpha=8, target_modules=QV, trainable_token_indices=TOKENS)),
    "tokens_tied": Case(dict(r=4, lora_alpha=8, target_modules=QV, trainable_token_indices=TOKENS), base="tied"),
    "tokens_tied_head_differs": Case(dict(r=4, lora_alpha=8, target_modules=QV,
                                          trainable_token_indices={"embed_tokens": TOKENS[:3], "lm_head": TOKENS[2:]}),
                                     base="tied"),
    "bias_all": Case(dict(r=4, lora_alpha=8, target_modules=["q_proj"], bias="all"), base="bias"),
    "bias_lora_only_lora_bias": Case(dict(r=4, lora_alpha=8, target_modules=QV, bias="lora_only", lora_bias=True), base="bias"),
    "gpt2_bias_all": Case(dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, bias="all"),
                          base="gpt2"),
    "init_gaussian": Case(dict(r=4, lora_alpha=8, target_modules=QV, init_lora_weights="gaussian")),
    "init_eva": Case(dict(r=4, lora_alpha=8, target_modules=QV, init_lora_weights="eva")),
    "init_mica": Case(dict(r=4, lora_alpha=8, target_modules=QV, init_lora_weights="mica")),
    "pissa_converted": Case(dict(r=4, lora_alpha=8, target_modules=QV, init_lora_weights="pissa"), convert=True),
    "olora_converted": Case(dict(r=4, lora_alpha=8, target_modules=QV, init_lora_weights="olora"), convert=True),
    "velora": Case(dict(r=4, lora_alpha=8, target_modules=QV, velora_config={"num_groups": 4})),
    "monteclora": Case(dict(r=4, lora_alpha=8, target_modules=QV, monteclora_config={}), refused=(features.RESIZE,),
                       says="monteclora_config"),
    "dora": Case(dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "embed_tokens"], use_dora=True),
                 refused=(features.RESCALE,), says="DoRA"),
    # --- refused by the verbs that run the model ------------------------------------------------------------------
    "alora": Case(dict(r=4, lora_alpha=8, target_modules=QV, alora_invocation_tokens=[6, 7], task_type="CAUSAL_LM"),
                  refused=MODEL_VERBS),
    "layer_replication": Case(dict(r=4, lora_alpha=8, target_modules=QV, layer_replication=[[0, 2], [1, 2]]),
                              refused=MODEL_VERBS),
    "task_seq_cls": Case(dict(r=4, lora_alpha=8, target_modules=QV), synth={"task_type": "SEQ_CLS"}, refused=MODEL_VERBS,
                         says="task_type"),
    # --- refused by every verb ----------------------------------------------------------------------------------
    "pissa": Case(dict(r=4, lora_alpha=8, target_modules=QV, init_lora_weights="pissa"), refused=ALL,
                  says="path_initial_model_for_weight_conversion"),
    "pissa_niter": Case(dict(r=4, lora_alpha=8, target_modules=QV, init_lora_weights="pissa_niter_2"), refused=ALL,
                        says="init_lora_weights"),
    "olora": Case(dict(r=4, lora_alpha=8, target_modules=QV, init_lora_weights="olora"), refused=ALL, says="init_lora_weights"),
    "lora_ga": Case(dict(r=4, lora_alpha=8, target_modules=QV, init_lora_weights="lora_ga"), refused=ALL,
                    says="init_lora_weights"),
    "corda": Case(dict(r=4, lora_alpha=8, target_modules=QV), synth={"init_lora_weights": "corda"}, refused=ALL,
                  says="init_lora_weights"),
    "loftq": Case(dict(r=4, lora_alpha=8, target_modules=QV), synth={"init_lora_weights": "loftq",
                                                                        "loftq_config": {"loftq_bits": 4}},
                  refused=ALL, says="init_lora_weights"),
    "init_unknown": Case(dict(r=4, lora_alpha=8, target_modules=QV), synth={"init_lora_weights": "newfangled"},
                         refused=ALL, says="init_lora_weights"),
    "moe_all_linear": Case(dict(r=4, lora_alpha=8, target_modules="all-linear"), base="mixtral", refused=ALL,
                           says="MoE expert adapters are not supported"),
    "target_parameters": Case(dict(r=4, lora_alpha=8, target_modules=["q_proj"], target_parameters=["mlp.up_proj.weight"]),
                              refused=ALL, says="target_parameters"),
    "qalora": Case(dict(r=4, lora_alpha=8, target_modules=QV, use_qalora=True), refused=ALL, says="use_qalora"),
    "bdlora": Case(dict(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj"],
                        use_bdlora={"target_modules_bd_a": ["q_proj"], "target_modules_bd_b": ["o_proj"], "nblocks": 2}),
                   refused=ALL, says="use_bdlora"),
    "kasa": Case(dict(r=4, lora_alpha=8, target_modules=QV, kasa_config={}), refused=ALL, says="kasa_config"),
    "arrow": Case(dict(r=4, lora_alpha=8, target_modules=QV), synth={"arrow_config": {"top_k": 2}}, refused=ALL,
                  says="arrow_config"),
    "megatron": Case(dict(r=4, lora_alpha=8, target_modules=QV), synth={"megatron_config": {"tensor_model_parallel_size": 2}},
                     refused=ALL, says="megatron_config"),
    "unknown_field": Case(dict(r=4, lora_alpha=8, target_modules=QV), synth={"use_future_trick": True}, refused=ALL,
                          says="use_future_trick"),
}

MIXTRAL = dict(model_type="mixtral", hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=128, max_position_embeddings=128, num_local_experts=4,
               num_experts_per_tok=2)


def fresh_base(base: str):
    """The same tiny base every time (seeded): what the adapter was trained on and what --model holds."""
    if base == "gpt2":
        return tiny_model("gpt2")
    if base == "mixtral":
        from transformers import AutoConfig, AutoModelForCausalLM

        torch.manual_seed(0)
        cfg = dict(MIXTRAL)
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg)).eval()
    return tiny_llama(**{"llama": {}, "tied": {"tie_word_embeddings": True}, "bias": {"attention_bias": True}}[base])


def _lora_config(kw: dict):
    kw = dict(kw)
    kw.setdefault("init_lora_weights", False)
    sub = {"velora_config": "VeloraConfig", "monteclora_config": "MontecloraConfig", "kasa_config": "KasaConfig",
           "use_bdlora": "BdLoraConfig"}
    for key, cls in sub.items():
        if isinstance(kw.get(key), dict):
            kw[key] = getattr(peft.tuners.lora.config, cls)(**kw[key])
    return peft.LoraConfig(**kw)


def _perturb(pm, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in pm.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g).to(p.dtype))


def make_adapter(name: str, case: Case, root: Path) -> Path:
    model = fresh_base(case.base)
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(model, _lora_config(case.lora))
        path = root / name
        if case.convert:
            pm.save_pretrained(str(root / f"{name}_init"))
        _perturb(pm, zlib.crc32(name.encode()) + SEED_OFFSET)
        pm.eval()
        if case.convert:
            pm.save_pretrained(str(path), path_initial_model_for_weight_conversion=str(root / f"{name}_init"))
        else:
            pm.save_pretrained(str(path))
    if case.synth:
        cfg = json.loads((path / "adapter_config.json").read_text())
        cfg.update(case.synth)
        (path / "adapter_config.json").write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    models = {}
    for base in ("llama", "tied", "bias", "gpt2"):
        models[base] = root / f"model_{base}"
        fresh_base(base).save_pretrained(models[base])
        tiny_tokenizer().save_pretrained(models[base])
    models["mixtral"] = models["llama"]  # refused before any model is read
    data = write_jsonl(root / "eval.jsonl", pc_records(6))
    adapters = {name: make_adapter(name, case, root) for name, case in CASES.items()}
    return dict(root=root, models=models, data=data, adapters=adapters, refs={})


def reference(env, name: str):
    """PEFT's own model of the adapter (cached)."""
    if name not in env["refs"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            env["refs"][name] = peft.PeftModel.from_pretrained(fresh_base(CASES[name].base),
                                                               str(env["adapters"][name])).eval()
    return env["refs"][name]


def peft_loss(env, pm, scale: float | None = 1.0, disabled: bool = False) -> float:
    from transformers import AutoTokenizer

    from loradial import data as d

    if "batch" not in env:  # every example in one batch: HF's mean loss == loradial's sum / count
        tok = AutoTokenizer.from_pretrained(str(env["models"]["llama"]))
        env["batch"] = d.collate(d.tokenize_records(d.load_records(env["data"]), tok, 512), tok.pad_token_id)
    batch = env["batch"]
    with torch.no_grad():
        if disabled:
            with pm.disable_adapter():
                return float(pm(**batch).loss)
        with rescale_adapter_scale(pm, scale):
            return float(pm(**batch).loss)


def x_tokens():
    return torch.tensor([[2, 6, 7, 8, 9, 10, 11, 12, 13, 6], [2, 14, 15, 6, 7, 16, 17, 18, 19, 20]])


def close_logits(got: torch.Tensor, want: torch.Tensor) -> None:
    """≤ 1e-5 relative to the logits' scale (float32 merged vs unmerged sums round differently)."""
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * max(1.0, float(want.abs().max())))


def peft_delta(pm, name: str) -> torch.Tensor:
    return pm.base_model.model.get_submodule(name).get_delta_weight("default").detach().double()


def non_lora_state(pm) -> dict[str, torch.Tensor]:
    sd = peft.get_peft_model_state_dict(pm)
    return {k: v for k, v in sd.items() if ".lora_" not in k}


# --- the table itself ---------------------------------------------------------------------------------------------
def test_every_lora_config_field_has_a_row():
    fields = [f.name for f in dataclasses.fields(peft.LoraConfig)]
    assert set(fields) == set(features.BY_FIELD), set(fields) ^ set(features.BY_FIELD)
    for row in features.FEATURES:
        assert set(row.statuses) == set(features.VERBS), row.field
        assert all(s in features.STATUSES for s in row.statuses.values()), row.field
        assert row.statuses[features.PLAN] != features.REFUSED and features.NOT_OFFERED not in (
            row.statuses[v] for v in features.ADAPTER_VERBS), row.field
        if features.REFUSED in row.statuses.values():
            assert row.action, f"{row.field}: a refusal must say what to do"


def test_docs_page_is_generated():
    page = Path(__file__).resolve().parents[1] / "docs" / "adapter-features.md"
    assert page.read_text() == features.render_markdown(), "run: python scripts/gen_adapter_features.py"


def test_default_config_engages_nothing_refused():
    cfg = peft.LoraConfig(r=4, target_modules=QV).to_dict()
    for verb in features.ADAPTER_VERBS:
        features.check(json.loads(json.dumps(cfg, default=str)), verb)


def test_every_case_is_a_real_peft_config_except_the_synthesized(env):
    for name, case in CASES.items():
        cfg = json.loads((env["adapters"][name] / "adapter_config.json").read_text())
        for key, value in case.lora.items():
            if key not in ("init_lora_weights",) and not case.convert:
                assert cfg.get(key) is not None, (name, key)
        if case.convert:  # how PEFT marks a converted adapter: plain LoRA of rank 2r
            assert cfg["init_lora_weights"] is True and cfg["r"] == 2 * case.lora["r"]


# --- exact: each verb against PEFT ----------------------------------------------------------------------------------
def _exact(verb: str) -> list[str]:
    return [n for n, c in CASES.items() if verb not in c.refused]


@pytest.mark.parametrize("name", _exact(features.ANALYZE))
def test_analyze_equals_peft(env, name):
    res = analyze(env["adapters"][name])
    ref = reference(env, name)
    for rep in res.modules:
        sv = torch.linalg.svdvals(peft_delta(ref, rep.name))[: rep.r].numpy()
        np.testing.assert_allclose(rep.singular_values, sv, rtol=1e-5, atol=1e-6 * max(1.0, sv[0]))
    ad = load_adapter(env["adapters"][name])
    if ad.saved:
        assert any("also saves" in n for n in res.notes)


@pytest.mark.parametrize("name", _exact(features.DATA))
def test_analyze_data_equals_peft(env, name):
    case = CASES[name]
    res = analyze(env["adapters"][name], model=env["models"][case.base], data=env["data"], ranks=[1], batch_size=64,
                  device="cpu")
    ref = reference(env, name)
    assert res.evaluation["full_eval_loss"] == pytest.approx(peft_loss(env, ref), rel=1e-5, abs=1e-6)
    # rank 0: no LoRA factors; the saved copies / rows / biases stay (as with PEFT's scale 0); DoRA: the base
    base0 = peft_loss(env, ref, disabled=True) if case.lora.get("use_dora") else peft_loss(env, ref, 0.0)
    assert res.evaluation["base_eval_loss"] == pytest.approx(base0, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", _exact(features.ALPHA))
def test_alpha_sweep_equals_peft(env, name):
    case = CASES[name]
    scales = [0.0, 0.5, 1.0]
    res = alpha_sweep(env["adapters"][name], env["models"][case.base], env["data"], scales=scales, batch_size=64,
                      device="cpu")
    ref = reference(env, name)
    for c, loss in zip(scales, res.losses):
        assert loss == pytest.approx(peft_loss(env, ref, c), rel=1e-5, abs=1e-6), c
    if load_adapter(env["adapters"][name]).saved:
        assert any("also saves" in n for n in res.notes)


@pytest.mark.parametrize("name", _exact(features.RESIZE))
def test_resize_equals_peft(env, name, tmp_path):
    res = resize(env["adapters"][name], tmp_path / "out", rank=2)
    ad = load_adapter(env["adapters"][name])
    ref = reference(env, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = peft.PeftModel.from_pretrained(fresh_base(CASES[name].base), str(tmp_path / "out")).eval()
    if ad.use_dora:  # approximate, and said so
        assert any("DoRA" in n for n in res.notes)
    for m in ad.modules.values():
        D = peft_delta(ref, m.name)
        U, S, Vh = torch.linalg.svd(D, full_matrices=False)
        k = min(2, m.r)
        best = (U[:, :k] * S[:k]) @ Vh[:k]
        torch.testing.assert_close(peft_delta(got, m.name), best, rtol=1e-5, atol=1e-6 * max(1.0, float(S[0])))
    want, have = non_lora_state(ref), non_lora_state(got)
    assert set(want) == set(have)
    for k in want:
        torch.testing.assert_close(have[k], want[k], rtol=0, atol=0)


@pytest.mark.parametrize("name", _exact(features.RESCALE))
def test_rescale_equals_peft(env, name, tmp_path):
    rescale(env["adapters"][name], tmp_path / "out", scale=0.5)
    ad = load_adapter(env["adapters"][name])
    ref = reference(env, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = peft.PeftModel.from_pretrained(fresh_base(CASES[name].base), str(tmp_path / "out")).eval()
    for m in ad.modules.values():
        torch.testing.assert_close(peft_delta(got, m.name), 0.5 * peft_delta(ref, m.name), rtol=1e-5, atol=1e-7)
    want, have = non_lora_state(ref), non_lora_state(got)
    assert set(want) == set(have) and all(torch.equal(have[k], want[k]) for k in want)
    if "alora_invocation_tokens" not in CASES[name].lora:
        x = x_tokens()
        with torch.no_grad(), rescale_adapter_scale(ref, 0.5):
            close_logits(got(x).logits, ref(x).logits)


#: tied embeddings where PEFT's own merge_and_unload differs from PEFT's forward (both tied modules change one shared
#: tensor twice); loradial's merge equals the forward. If PEFT fixes this, the test says so.
PEFT_MERGE_DIFFERS = {"lora_embed_tied_ewt", "tokens_tied_head_differs"}


@pytest.mark.parametrize("name", _exact(features.MERGE))
def test_merge_equals_peft(env, name, tmp_path):
    from transformers import AutoModelForCausalLM

    case = CASES[name]
    res = merge(env["adapters"][name], env["models"][case.base], tmp_path / "m")
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m")).eval()
    ref = reference(env, name)
    x = x_tokens()
    with torch.no_grad():
        ours, want = merged(x).logits, ref(x).logits
        close_logits(ours, want)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            unloaded = peft.PeftModel.from_pretrained(fresh_base(case.base), str(env["adapters"][name])).merge_and_unload()
        if name in PEFT_MERGE_DIFFERS:
            assert not torch.allclose(unloaded(x).logits, want, rtol=1e-5, atol=1e-5), "PEFT fixed its tied merge"
        else:
            close_logits(ours, unloaded(x).logits)
    if load_adapter(env["adapters"][name]).saved:
        assert res.replaced_modules


# --- refused: the CLI exits 2 naming the feature and writes nothing --------------------------------------------------
def _refusals() -> list[tuple[str, str]]:
    return [(n, v) for n, c in CASES.items() for v in c.refused]


def _says(case: Case) -> str:
    return case.says or next(iter({**(case.synth or {}), **{k: v for k, v in case.lora.items()
                                                              if k not in ("r", "lora_alpha", "target_modules")}}))


@pytest.mark.parametrize("name,verb", _refusals())
def test_refused_cleanly(env, name, verb, cli, tmp_path):
    case = CASES[name]
    path, model, data = env["adapters"][name], env["models"][case.base], env["data"]
    out = tmp_path / "out"
    args = {
        features.ANALYZE: ["analyze", path],
        features.DATA: ["analyze", path, "--model", model, "--data", data],
        features.RESIZE: ["resize", path, "--rank", "2", "--out", out],
        features.RESCALE: ["rescale", path, "--scale", "0.5", "--out", out],
        features.ALPHA: ["alpha-sweep", path, "--model", model, "--data", data, "--scales", "0,1"],
        features.MERGE: ["merge", path, "--model", model, "--out", out],
    }[verb]
    code, stdout, err = cli(*args)
    assert code == 2, (stdout, err)
    assert _says(case) in err, err
    assert "Traceback" not in err and not out.exists()


def test_merge_refusal_matches_peft_for_alora(env):
    """PEFT itself cannot merge an aLoRA adapter; loradial says so instead of merging it everywhere."""
    with pytest.raises(NotImplementedError):
        reference(env, "alora").merge_and_unload()


def test_unconverted_pissa_is_not_w_plus_delta(env, tmp_path):
    """Why PiSSA is refused: PEFT's model of the unconverted adapter differs from W + s·B·A on the base."""
    from loradial.errors import LoradialError

    ref = reference(env, "pissa")
    with pytest.raises(LoradialError, match="path_initial_model_for_weight_conversion"):
        load_adapter(env["adapters"]["pissa"])
    base = fresh_base("llama")
    name = "model.layers.0.self_attn.q_proj"
    W_peft = ref.base_model.model.get_submodule(name).get_base_layer().weight.detach()
    assert not torch.allclose(W_peft, base.get_submodule(name).weight.detach(), atol=1e-3)


def test_analyze_base_maps_replicated_layers(env):
    """analyze --base on a layer_replication adapter: each copy's ‖ΔW‖/‖W‖ uses the base layer it repeats."""
    res = analyze(env["adapters"]["layer_replication"], base=env["models"]["llama"])
    base = fresh_base("llama")
    by_name = {m.name: m for m in res.modules}
    # [[0, 2], [1, 2]]: replicated layers 0, 1, 2 repeat base layers 0, 1, 1
    for layer, source in ((0, 0), (1, 1), (2, 1)):
        rep = by_name[f"model.layers.{layer}.self_attn.q_proj"]
        W = base.get_submodule(f"model.layers.{source}.self_attn.q_proj").weight.detach().double()
        assert rep.relative_norm == pytest.approx(rep.frobenius_norm / float(W.norm()), rel=1e-9)
