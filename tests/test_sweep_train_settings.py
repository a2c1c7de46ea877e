"""The training settings `loradial sweep` shares with `loradial train` (--gradient-checkpointing, --grad-accum,
--dropout, --packing, --load-in-4bit): they reach the engine, survive --resume (old sweep.yaml files resume
with the old defaults), feed the memory packer, and bad values exit 2 with nothing written."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import loradial
from loradial.errors import LoradialError
from test_engine_fixtures import pc_records, save_tiny_model, write_jsonl

KW = dict(ranks=[2, 4], alphas="ratio:2", lrs=[5e-3], targets=["q_proj,v_proj,down_proj"], steps=3, batch_size=2,
          max_len=48, eval_every=2)
SETTINGS = ("gradient_checkpointing", "grad_accum", "dropout", "packing", "load_in_4bit")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep_settings")
    return save_tiny_model(root / "model"), write_jsonl(root / "train.jsonl", pc_records(40))


@pytest.fixture
def engine_calls(monkeypatch):
    """Record the keyword arguments (and adapter dropouts) of every Engine the sweep builds."""
    import loradial.engine as eng

    calls = []

    class Spy(eng.Engine):
        def __init__(self, model, adapters, train, **kw):
            calls.append({**kw, "dropouts": {a.spec.lora_dropout for a in adapters}, "n_train": len(train)})
            super().__init__(model, adapters, train, **kw)

    monkeypatch.setattr(eng, "Engine", Spy)
    return calls


def weights(out, name):
    return load_file(str(out / "adapters" / name / "adapter_model.safetensors"))


def same_results(a, b, out_a, out_b, rel=1e-4):
    for x, y in zip(a.configs, b.configs):
        assert x["name"] == y["name"]
        for key in ("best_eval_loss", "final_eval_loss", "final_train_loss"):
            assert x[key] == pytest.approx(y[key], rel=rel), (x["name"], key)
        wa, wb = weights(out_a, x["name"]), weights(out_b, x["name"])
        assert wa.keys() == wb.keys()
        assert all(torch.allclose(wa[k], wb[k], rtol=rel, atol=1e-6) for k in wa), x["name"]


@pytest.fixture(scope="module")
def plain(assets, tmp_path_factory):
    """The reference: --grad-accum 2, no gradient checkpointing."""
    model, data = assets
    out = tmp_path_factory.mktemp("plain") / "sw"
    return out, loradial.sweep(str(model), str(data), out=out, grad_accum=2, **KW)


def test_checkpointing_and_grad_accum_reach_the_engine_and_change_no_math(assets, plain, tmp_path, engine_calls):
    model, data = assets
    out = tmp_path / "gc"
    res = loradial.sweep(str(model), str(data), out=out, gradient_checkpointing=True, grad_accum=2, **KW)
    assert engine_calls and all(c["gradient_checkpointing"] is True and c["grad_accum"] == 2 for c in engine_calls)
    assert {k: res.settings["train"][k] for k in SETTINGS} == {"gradient_checkpointing": True, "grad_accum": 2,
                                                               "dropout": 0.0, "packing": False, "load_in_4bit": False}
    saved = yaml.safe_load((out / "sweep.yaml").read_text())
    assert saved["train"]["gradient_checkpointing"] is True and saved["train"]["grad_accum"] == 2
    ref_out, ref = plain
    same_results(res, ref, out, ref_out)  # checkpointing recomputes; it must not change a number
    # grad_accum=2 is really two micro-batches per step: twice the tokens of one batch per logged step
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    one = loradial.sweep(str(model), str(data), out=tmp_path / "ga1", **KW)
    rows1 = [json.loads(ln) for ln in (tmp_path / "ga1" / "metrics.jsonl").read_text().splitlines()]
    tok = sum(r["tokens"] for r in rows if "loss" in r)
    tok1 = sum(r["tokens"] for r in rows1 if "loss" in r)
    assert tok > 1.5 * tok1
    assert one.configs[0]["best_eval_loss"] != pytest.approx(ref.configs[0]["best_eval_loss"], rel=1e-6)


def test_dropout_and_packing_reach_the_engine_and_the_adapters(assets, tmp_path, engine_calls):
    model, data = assets
    out = tmp_path / "dp"
    kw = {**KW, "ranks": [2]}
    res = loradial.sweep(str(model), str(data), out=out, dropout=0.1, packing=True, **kw)
    assert engine_calls and all(c["dropouts"] == {0.1} for c in engine_calls)
    cfg = json.loads((out / "adapters" / res.configs[0]["name"] / "adapter_config.json").read_text())
    assert cfg["lora_dropout"] == 0.1
    unpacked = loradial.sweep(str(model), str(data), out=tmp_path / "np", **kw)
    assert engine_calls[0]["n_train"] < engine_calls[-1]["n_train"]  # packing: fewer, fuller blocks
    assert res.settings["train"]["packing"] is True and unpacked.settings["train"]["packing"] is False
    # dropout masks are seeded per segment: the same sweep gives the same numbers
    again = loradial.sweep(str(model), str(data), out=tmp_path / "dp2", dropout=0.1, packing=True, **kw)
    same_results(res, again, out, tmp_path / "dp2", rel=1e-6)


def test_resume_keeps_the_settings(assets, plain, tmp_path, monkeypatch, engine_calls):
    """A sweep interrupted after its directory was written resumes with its own settings, not the defaults."""
    import loradial.sweeps.runner as runner

    model, data = assets
    out = tmp_path / "r"
    real_run = runner.run

    def crash(*a, **k):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(runner, "run", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        loradial.sweep(str(model), str(data), out=out, gradient_checkpointing=True, grad_accum=2, **KW)
    monkeypatch.setattr(runner, "run", real_run)
    assert not engine_calls
    res = loradial.sweep(out=out, resume=True)
    assert engine_calls and all(c["gradient_checkpointing"] is True and c["grad_accum"] == 2 for c in engine_calls)
    assert res.settings["train"]["gradient_checkpointing"] is True and res.settings["train"]["grad_accum"] == 2
    ref_out, ref = plain
    same_results(res, ref, out, ref_out)


V1 = Path(__file__).parent / "data" / "sweep_v1"  # written by loradial 0.1 before settings were typed (sweep.yaml v1)


def _v1_sweep(out: Path, model, data, drop: tuple[str, ...] = ()) -> None:
    """The committed v1 sweep directory (crashed before training), pointed at this test's model and data."""
    out.mkdir()
    text = (V1 / "sweep.yaml").read_text()
    lines = [ln for ln in text.splitlines() if not ln.startswith(tuple(f"{k}:" for k in drop))]
    assert len(lines) == len(text.splitlines()) - len(drop)
    text = "\n".join(lines) + "\n"
    text = re.sub(r"^model: .*$", f"model: {model}", text, flags=re.M)
    text = re.sub(r"^data: .*$", f"data: {data}", text, flags=re.M)
    (out / "sweep.yaml").write_text(text)
    shutil.copy(V1 / "state.json", out / "state.json")
    (out / "metrics.jsonl").write_text("")


V1_KW = dict(ranks=[2, 4], alphas="ratio:2", lrs=[5e-3], targets=["q_proj,v_proj,down_proj"], steps=4, batch_size=2,
             max_len=48, eval_every=2, halving=True, halving_at="0.5")


def test_a_sweep_written_by_the_previous_release_resumes_with_its_settings(assets, tmp_path, engine_calls):
    """sweep.yaml v1 (flat training keys) is migrated on load and resumes as the sweep it describes."""
    model, data = assets
    _v1_sweep(tmp_path / "v1", model, data)
    res = loradial.sweep(out=tmp_path / "v1", resume=True)
    assert engine_calls and all(c["gradient_checkpointing"] is True and c["grad_accum"] == 2 and c["dropouts"] == {0.1}
                                for c in engine_calls)
    assert res.settings["loradial_sweep"] == 2 and res.settings["train"]["dropout"] == 0.1
    new = loradial.sweep(str(model), str(data), out=tmp_path / "new", gradient_checkpointing=True, grad_accum=2,
                         dropout=0.1, **V1_KW)
    same_results(res, new, tmp_path / "v1", tmp_path / "new", rel=1e-6)


def test_old_sweep_yaml_without_the_keys_resumes_with_the_old_defaults(assets, tmp_path, engine_calls):
    model, data = assets
    _v1_sweep(tmp_path / "old", model, data, drop=SETTINGS)  # as written before these settings existed
    res = loradial.sweep(out=tmp_path / "old", resume=True)
    assert engine_calls and all(c["gradient_checkpointing"] is False and c["grad_accum"] == 1 and c["dropouts"] == {0.0}
                                for c in engine_calls)
    new = loradial.sweep(str(model), str(data), out=tmp_path / "new", **V1_KW)
    same_results(res, new, tmp_path / "old", tmp_path / "new", rel=1e-6)


def test_a_damaged_sweep_yaml_names_the_field(assets, tmp_path, cli):
    model, data = assets
    _v1_sweep(tmp_path / "bad", model, data)
    path = tmp_path / "bad" / "sweep.yaml"
    path.write_text(path.read_text().replace("  r: 4\n", "  r: 0\n"))
    code, _, err = cli("sweep", "--resume", tmp_path / "bad")
    assert code == 2 and "configs[1].r must be greater than 0 (got 0)" in err and "Traceback" not in err


# --- the memory packer ------------------------------------------------------------------------------
def _costs(gradient_checkpointing=False, load_in_4bit=False, gib=None, dropout=None, use_dora=False):
    from loradial.models.resolve import inspect_model
    from loradial.models.targets import matched_modules
    from loradial.spec import LoraSpec
    from loradial.sweeps.setup import memory_costs

    info = inspect_model("llama-3.1-8b")  # bundled config: no weights
    spec = LoraSpec(r=16, target_modules="all-linear")
    targeted = {"r16": [(m, spec.rank_for(m.name)) for m in matched_modules(spec, info)]}
    from loradial.settings import SweepConfigEntry, SweepSettings, TrainSettings

    train = TrainSettings(max_len=2048, dtype="bf16", batch_size=4, dropout=dropout or 0.0,
                          gradient_checkpointing=bool(gradient_checkpointing), load_in_4bit=bool(load_in_4bit))
    settings = SweepSettings.model_construct(train=train, configs=[SweepConfigEntry.model_construct(name="r16", r=16, use_dora=use_dora)])
    budget, costs = memory_costs(settings, info, targeted, [{"input_ids": [0] * 2048}], ["cpu"], gib)
    from loradial.sweeps.pack import ConfigCost

    return budget, [ConfigCost(**c.model_dump()) for c in costs]


def test_packer_accepts_a_config_that_only_fits_with_gradient_checkpointing():
    from loradial.sweeps.pack import GiB, make_packs

    _, plain = _costs()
    _, gc = _costs(gradient_checkpointing=True)
    _, q = _costs(gradient_checkpointing=True, load_in_4bit=True)
    assert q[0].alone < gc[0].alone < plain[0].alone
    budget, _ = _costs(gib=(gc[0].alone + plain[0].alone) / 2 / GiB)
    with pytest.raises(LoradialError, match="needs about"):
        make_packs(plain, budget)
    assert make_packs(gc, budget) == [["r16"]]
    # 4-bit: fits where only the quantized base does
    budget = int((q[0].alone + gc[0].alone) / 2)
    with pytest.raises(LoradialError, match="needs about"):
        make_packs(gc, budget)
    assert make_packs(q, budget) == [["r16"]]


def test_packer_counts_the_dropout_mask_for_lora_and_dora():
    """--dropout: per module and adapter the engine keeps a bool mask and the dropped input (bf16 on
    this CPU budget: (1 + 2)·M·d_in bytes), DoRA included (``cost.engine_memory``)."""
    mask = 3 * 4 * 2048 * sum(d for d in _d_ins())  # batch 4 x 2048 tokens, one adapter
    for dora in (False, True):
        base, drop = _costs(use_dora=dora)[1][0], _costs(use_dora=dora, dropout=0.1)[1][0]
        assert drop.alone - base.alone == mask and drop.marginal - base.marginal == mask


def _d_ins():
    from loradial.models.resolve import inspect_model
    from loradial.models.targets import matched_modules
    from loradial.spec import LoraSpec

    info = inspect_model("llama-3.1-8b")
    return [m.d_in for m in matched_modules(LoraSpec(r=16, target_modules="all-linear"), info)]


# --- --load-in-4bit on a CPU, and bad values ---------------------------------------------------------
def test_load_in_4bit_on_cpu_gives_trains_error_and_writes_nothing(assets, tmp_path, cli, monkeypatch):
    """Where bitsandbytes cannot quantize on a CPU (< 0.48, or not installed), both verbs refuse alike."""
    try:
        import bitsandbytes

        monkeypatch.setattr(bitsandbytes, "__version__", "0.47.0")
        needle = "--load-in-4bit on a CPU needs bitsandbytes >= 0.48"
    except ImportError:
        needle = "--load-in-4bit needs bitsandbytes"
    model, data = assets
    code_t, _, err_t = cli("train", "--model", model, "--data", data, "--rank", "2", "--alpha", "4", "--steps", "1",
                           "--load-in-4bit", "--out", tmp_path / "t")
    code_s, _, err_s = cli("sweep", "--model", model, "--data", data, "--ranks", "2", "--steps", "1", "--devices", "cpu",
                           "--load-in-4bit", "--out", tmp_path / "s")
    assert code_t == code_s == 2
    assert needle in err_s and "Traceback" not in err_s
    assert err_s.strip() == err_t.strip()  # the same one line and hint as `loradial train`
    assert not (tmp_path / "s").exists() and not (tmp_path / "t").exists()


def test_load_in_4bit_is_passed_to_the_model_loader(assets, monkeypatch):
    """The segment loads its base with load_in_4bit (the loader itself refuses it on a CPU)."""
    import loradial.models.load as load
    from loradial.settings import SweepSettings, TrainSettings
    from loradial.sweeps.segment import SegmentEnv, release

    seen = {}

    def fake_load(model, **kw):
        seen.update(kw)
        raise LoradialError("stop here")

    monkeypatch.setattr(load, "load_model", fake_load)
    ctx = type("Ctx", (), {"tokenizer": None, "train": [], "eval": []})()
    with pytest.raises(LoradialError, match="stop here"):
        settings = SweepSettings.model_construct(model=str(assets[0]), train=TrainSettings(dtype="bf16", load_in_4bit=True))
        SegmentEnv.shared(settings, ctx, "cuda:0")
    release()
    assert seen["load_in_4bit"] is True and seen["device"] == "cuda:0"


@pytest.mark.parametrize("args, message", [
    (["--grad-accum", "0"], "--grad-accum must be greater than or equal to 1 (got 0)"),
    (["--dropout", "1.5"], "--dropout must be less than 1 (got 1.5)"),
])
def test_bad_training_settings_exit_2_and_write_nothing(assets, tmp_path, cli, args, message):
    model, data = assets
    code, _, stderr = cli("sweep", "--model", model, "--data", data, "--ranks", "2", "--steps", "1",
                          "--out", tmp_path / "out", *args)
    assert code == 2 and message in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


def test_dropout_sweep_resumed_between_rungs_matches_an_uninterrupted_one(assets, tmp_path, monkeypatch):
    """Uninterrupted, rung 2 keeps the engine in memory; resumed, it is rebuilt from the per-config
    checkpoints: both draw the same dropout masks (the segment's RNG is seeded from the sweep's seed)."""
    import loradial.sweeps.runner as runner

    model, data = assets
    kw = {**KW, "steps": 4, "halving": True, "halving_at": "0.5", "dropout": 0.2}
    ref = loradial.sweep(str(model), str(data), out=tmp_path / "ref", **kw)
    real_fault = runner.fault

    def crash_at(point):
        if point == "halve:0":
            raise RuntimeError("simulated crash")
        real_fault(point)

    monkeypatch.setattr(runner, "fault", crash_at)
    with pytest.raises(RuntimeError, match="simulated"):
        loradial.sweep(str(model), str(data), out=tmp_path / "cut", **kw)
    monkeypatch.setattr(runner, "fault", real_fault)
    res = loradial.sweep(out=tmp_path / "cut", resume=True)
    assert sorted(c["stopped_at"] or 4 for c in res.configs) == [2, 4]
    same_results(res, ref, tmp_path / "cut", tmp_path / "ref", rel=1e-6)


def test_a_model_that_cannot_checkpoint_is_refused_before_anything_is_written(assets, tmp_path, cli, monkeypatch):
    from transformers import LlamaForCausalLM

    model, data = assets
    monkeypatch.setattr(LlamaForCausalLM, "supports_gradient_checkpointing", False)
    code, _, stderr = cli("sweep", "--model", model, "--data", data, "--ranks", "2", "--steps", "1",
                          "--gradient-checkpointing", "--out", tmp_path / "out")
    assert code == 2 and "does not support gradient checkpointing" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()
