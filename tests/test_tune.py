"""`loradial tune` on a tiny model: the staged search (stages and decisions recorded, a planted diverging
config stopped early, survivors continued from their checkpoints with the weights of an uninterrupted run,
the budget never exceeded), kill -9 + --resume equality, and bad budgets as clean exit-2 errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from loradial.settings import TunePolicy

import loradial
import loradial.flows.tune as tune_mod

KW = dict(rank=4, lr=2e-3, steps=16, batch_size=4, max_len=48, eval_fraction=0.25, targets="q_proj,v_proj,down_proj")
PLANTED = 1e30  # a learning rate whose first AdamW step overflows the forward: the loss turns NaN
DEMO = Path(loradial.__file__).parent / "assets"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """The bundled demo model (a real pretrained 4M Llama, so the search has something to find) and
    96 of its fine-tuning records."""
    root = tmp_path_factory.mktemp("tune")
    lines = (DEMO / "demo-data" / "train.jsonl").read_text().splitlines()[:96]
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    return DEMO / "demo-model", root / "train.jsonl"


def _planted(monkeypatch):
    real = tune_mod.explore_grid
    monkeypatch.setattr(tune_mod, "explore_grid", lambda r0, lr0: (real(r0, lr0)[0], [*real(r0, lr0)[1], PLANTED]))


@pytest.fixture(scope="module")
def tuned(assets, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    _planted(mp)
    try:
        model, data = assets
        out = tmp_path_factory.mktemp("tuned") / "t"
        return out, loradial.tune(str(model), str(data), out=out, budget=2000, **KW)
    finally:
        mp.undo()


def test_stages_decisions_and_outputs(tuned):
    out, res = tuned
    assert [s["stage"] for s in res.stages] == ["start", "explore", "refine", "continue"]
    explore = res.stages[1]
    assert explore["ranks"] == [2, 4, 8, 16] and explore["lrs"] == [6.67e-4, 2e-3, 6e-3, PLANTED]
    assert len(explore["configs"]) == 4 * 4 * 2 and explore["steps"] == [0, 2]
    actions = {(d["rung"], d["action"]) for d in res.decisions}
    assert {(1, "kept"), (1, "stopped"), (2, "kept"), (2, "stopped")} <= actions
    assert all(d["reason"] and d["step"] in (2, 4) for d in res.decisions)
    added = [d for d in res.decisions if d["action"] == "added"]
    assert added and all("learning rate half-way" in d["reason"] or "rank one doubling" in d["reason"] for d in added)
    kept_last = [d["config"] for d in res.decisions if d["rung"] == 2 and d["action"] == "kept"]
    assert len(kept_last) == TunePolicy().finalists and res.best_config["name"] in kept_last and res.best_config["steps"] == 16
    for path in (res.best_adapter, *res.exports.values(), res.report, out / "tune.json"):
        assert Path(path).exists(), path
    assert set(res.exports) == {"peft", "trl", "axolotl", "llamafactory", "unsloth", "torchtune"}
    assert json.loads((out / "tune.json").read_text())["best_adapter"] == res.best_adapter
    assert res.why and res.base_eval_loss is not None and res.best_eval_loss < res.base_eval_loss
    html = Path(res.report).read_text()
    assert "Why this config" in html and res.best_config["name"] in html and "behind:" in html


def test_the_planted_diverging_configs_stop_at_the_first_rung(tuned):
    _, res = tuned
    planted = {c["name"] for c in res.configs if c["learning_rate"] == PLANTED}
    first = {d["config"]: d for d in res.decisions if d["rung"] == 1}
    assert planted and all(first[n]["action"] == "stopped" for n in planted)
    assert any(first[n]["reason"].startswith("curve is") for n in planted)  # by the curve rule, not by ranking
    assert all(c["stopped_at"] == 2 for c in res.configs if c["name"] in planted)


def test_budget_is_never_exceeded_and_the_grid_is_larger(tuned):
    _, res = tuned
    planned = json.loads((Path(res.out) / "tune-plan.json").read_text())["planned_adapter_steps"]
    assert res.adapter_steps_used <= planned <= res.adapter_steps_budget == 2000
    assert res.adapter_steps_used <= 0.25 * res.adapter_steps_grid
    steps = {c["name"]: c["steps"] for c in res.configs}
    assert res.adapter_steps_used == sum(steps.values())


def test_finalists_continue_from_their_checkpoints_with_the_weights_of_an_uninterrupted_run(assets, tuned, tmp_path):
    """The winner trained 0 -> 2 (explore), 2 -> 4 (rung 2), 4 -> 16 (continued): the same tensors as the
    same config trained 0 -> 16 in one plain sweep."""
    model, _ = assets
    out, res = tuned
    b = res.best_config
    plan = json.loads((out / "tune-plan.json").read_text())
    ref = loradial.sweep(str(model), plan["train"], out=tmp_path / "ref", ranks=[b["r"]], alphas="ratio:1",
                         variants=["rslora" if b["use_rslora"] else "lora"], targets=[KW["targets"]],
                         lrs=[b["learning_rate"]], steps=16, batch_size=4, max_len=48, eval_data=plan["eval"])
    got = load_file(str(Path(res.best_adapter) / "adapter_model.safetensors"))
    want = load_file(str(tmp_path / "ref" / "adapters" / ref.best / "adapter_model.safetensors"))
    assert got.keys() == want.keys()
    # float32 GEMMs of a 32-adapter pack and of a 1-adapter one round differently, and AdamW's normalised
    # steps carry that on: 3e-6 to 6e-5 of each tensor's norm measured here
    assert max(float((got[k] - want[k]).norm() / want[k].norm()) for k in got) < 2e-4
    assert ref.configs[0]["best_eval_loss"] == pytest.approx(res.best_eval_loss, rel=1e-4)


def test_kill_9_then_resume_gives_the_same_answer(assets, tuned, tmp_path):
    model, data = assets
    _, ref = tuned
    out = tmp_path / "k"
    args = ["tune", "--model", str(model), "--data", str(data), "--out", str(out), "--budget", "2000",
            "--rank", "4", "--lr", "2e-3", "--steps", "16", "--batch-size", "4", "--max-len", "48",
            "--eval-fraction", "0.25", "--targets", KW["targets"]]
    src = str(Path(loradial.__file__).parents[1])
    tests = str(Path(__file__).parent)
    code = ("import sys, loradial.flows.tune as t, test_tune as tt, pytest; mp = pytest.MonkeyPatch(); tt._planted(mp); "
            "from loradial.cli import main; sys.argv = ['loradial'] + sys.argv[1:]; main()")
    for point in ("added:0", "commit:r2-p0"):
        env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), LORADIAL_SWEEP_KILL=point,
                   PYTHONPATH=os.pathsep.join([src, tests, os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, timeout=600)
        if proc.returncode != -9:  # killed at the first point already: the second resumes first
            assert point != "added:0", proc.stderr.decode()[-2000:]
        args = ["tune", "--resume", str(out)]
    res = loradial.tune(out=out, resume=True)
    assert res.best_config == ref.best_config and res.adapter_steps_used == ref.adapter_steps_used
    assert res.best_eval_loss == pytest.approx(ref.best_eval_loss, rel=1e-6)
    assert [(d["config"], d["action"]) for d in res.decisions] == [(d["config"], d["action"]) for d in ref.decisions]
    got = load_file(str(Path(res.best_adapter) / "adapter_model.safetensors"))
    want = load_file(str(Path(ref.best_adapter) / "adapter_model.safetensors"))
    # same packs and steps; float32 rounding may still differ between processes with other thread pools
    assert max(float((got[k] - want[k]).norm() / want[k].norm()) for k in got) < 2e-4


@pytest.mark.parametrize("args, message", [
    (["--budget", "0"], "--budget must be a positive integer"),
    (["--budget", "50"], "is too small"),
    (["--budget", "100", "--steps", "400"], "cannot pay for --steps 400"),
    ([], "no compute budget"),
    (["--budget", "2000", "--eval-fraction", "0"], "--eval-fraction must be in (0, 1)"),
    (["--budget", "2000", "--rank", "0"], "--rank must be a positive integer"),
])
def test_bad_budgets_are_clean_exit_2_errors_and_write_nothing(assets, tmp_path, cli, args, message):
    model, data = assets
    code, _, err = cli("tune", "--model", model, "--data", data, "--out", tmp_path / "t", "--rank", "4", *args)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "t").exists()


def test_plan_steps_fills_the_budget():
    from loradial.sweeps.tuning import planned_adapter_steps

    policy = TunePolicy()
    s = tune_mod.plan_steps(24, 10_000, None, policy)
    assert planned_adapter_steps(24, tune_mod.boundaries(s), policy) <= 10_000
    assert planned_adapter_steps(24, tune_mod.boundaries(s + 1), policy) > 10_000
    assert not math.isnan(s)


def test_time_budget_is_the_calibrated_rate_times_the_time_left(assets, tmp_path, monkeypatch):
    seen = {}

    def calibrate(out, model, train, eval_file, ranks, lrs, targets, devices, kw):
        return {"steps": 3, "configs": 24, "seconds": 0.0, "adapter_steps_per_s": 10.0}

    def plan_steps(n_explore, budget, steps, policy):
        seen["budget"] = budget
        raise RuntimeError("stop after planning")

    monkeypatch.setattr(tune_mod, "_calibrate", calibrate)
    monkeypatch.setattr(tune_mod, "plan_steps", plan_steps)
    model, data = assets
    with pytest.raises(RuntimeError, match="stop after planning"):
        loradial.tune(str(model), str(data), out=tmp_path / "t", time=1000, **{k: v for k, v in KW.items() if k != "steps"})
    assert 0.8 * 10 * 900 < seen["budget"] <= 0.8 * 10 * 1000  # the rate x the time left x TIME_SAFETY
    assert not (tmp_path / "t").exists()  # nothing left behind

