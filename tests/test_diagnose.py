"""diagnose: verdicts on labeled curves (synthetic shapes + real tiny-model runs), evidence, next
configs from the ladder, every log format, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loradial.advice.diagnosis import Thresholds, diagnose, rolling_median
from loradial.errors import LoradialError
from loradial.advice.logs import read_log, read_torchtune_txt

LOGS = Path(__file__).parent / "data" / "logs"
MANIFEST = json.loads((LOGS / "manifest.json").read_text())


def test_manifest_has_at_least_20_curves_of_every_verdict():
    verdicts = [v for entry in MANIFEST.values() for v in entry.values()]
    assert len(verdicts) >= 20
    assert set(verdicts) == {"healthy", "underfitting", "overfitting", "memorizing", "unstable", "too_few_steps"}
    assert any(k.startswith("real/") for k in MANIFEST)


@pytest.mark.parametrize("rel", sorted(MANIFEST))
def test_labeled_curve(rel):
    result = diagnose(LOGS / rel)
    got = {a.adapter: a.verdict for a in result.adapters}
    assert got == MANIFEST[rel], [(a.adapter, a.flags, a.summary) for a in result.adapters]
    for a in result.adapters:
        assert a.summary and a.next, a
        assert a.flags[0] == a.verdict


def test_formats_are_detected():
    fmts = {rel: read_log(LOGS / rel).format for rel in MANIFEST}
    assert fmts["synthetic/healthy_hf/trainer_state.json"] == "hf-trainer"
    assert fmts["synthetic/sweep/metrics.jsonl"] == "loradial"
    assert fmts["synthetic/healthy_litgpt/metrics.csv"] == "litgpt"
    assert fmts["synthetic/healthy_spike/log_1700000000.txt"] == "torchtune"
    assert fmts["synthetic/overfit_torchtune/log_1700000002.jsonl"] == "torchtune"
    assert fmts["synthetic/healthy_noisy.csv"] == "csv"
    assert fmts["synthetic/healthy_list.json"] == "json"


def test_hf_summary_entry_is_not_a_train_point():
    data = read_log(LOGS / "synthetic/healthy_hf/trainer_state.json")
    curve = data.curves["default"]
    assert len(curve.loss) == 300 and len(curve.eval_loss) == 10
    assert curve.lr[0] == 2e-4


def test_directory_finds_the_log():
    assert read_log(LOGS / "real" / "healthy").path.endswith("trainer_state.json")
    assert read_log(LOGS / "synthetic" / "healthy_spike").format == "torchtune"


def test_overfitting_evidence_and_alpha_sweep_first():
    r = diagnose(LOGS / "synthetic/overfit_ushape/trainer_state.json")
    ev = r.evidence
    assert r.verdict == "overfitting"
    assert ev["eval_rise"] >= 0.03 and 60 <= ev["eval_min_step"] <= 160
    assert ev["eval_end"] > ev["eval_min"]
    assert r.next[0]["action"] == "alpha_sweep" and "alpha-sweep" in r.next[0]["command"]
    stop = next(s for s in r.next if s["action"] == "stop_at_best")
    assert stop["config"]["steps"] == ev["eval_min_step"]
    assert any("bottomed out" in s for s in r.summary)


def test_next_configs_are_concrete_with_the_runs_adapter_config():
    run_dir = LOGS / "real" / "overfit"
    cfg = json.loads((run_dir / "adapter_config.json").read_text())
    r = diagnose(run_dir / "trainer_state.json")
    assert r.evidence["config"]["r"] == cfg["r"]
    assert r.evidence["config"]["learning_rate"] == pytest.approx(1e-2)
    steps = {s["action"]: s for s in r.next}
    assert str(run_dir) in steps["alpha_sweep"]["command"]
    assert steps["halve_alpha"]["config"] == {"lora_alpha": cfg["lora_alpha"] / 2}
    assert steps["halve_rank"]["config"] == {"r": cfg["r"] // 2, "lora_alpha": cfg["lora_alpha"] / 2}


def test_underfitting_next_doubles_rank_at_same_scale():
    r = diagnose(LOGS / "real/underfit/trainer_state.json")
    step = r.next[0]
    assert step["action"] == "double_rank" and step["config"] == {"r": 16, "lora_alpha": 16}


def test_sweep_reports_every_adapter_and_picks_the_best():
    r = diagnose(LOGS / "synthetic/sweep/metrics.jsonl")
    assert len(r.adapters) == 3
    best = min(r.adapters, key=lambda a: a.evidence["eval_min"])
    assert r.adapter == best.adapter and r.verdict == best.verdict


def test_unstable_reports_where():
    r = diagnose(LOGS / "synthetic/unstable_nan/trainer_state.json")
    assert r.verdict == "unstable" and r.evidence["nonfinite_step"] == 120
    r = diagnose(LOGS / "synthetic/unstable_spikes/log_1700000004.txt")
    assert r.evidence["n_spikes"] >= 3 and r.next[0]["action"] == "halve_lr"


def test_thresholds_are_overridable():
    path = LOGS / "synthetic/memorize_torchtune/log_1700000003.txt"
    assert diagnose(path).verdict == "memorizing"
    assert diagnose(path, thresholds=Thresholds(memorize_loss=0.05)).verdict != "memorizing"


def test_rules_file_overrides_the_ladder(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("ladder:\n  healthy:\n    - {action: ship_it, why: looks fine}\n")
    r = diagnose(LOGS / "synthetic/healthy_noisy.csv", rules_file=rules)
    assert [s["action"] for s in r.next] == ["ship_it"]


def test_torchtune_one_metric_per_line_is_merged():
    recs = read_torchtune_txt("Step 1 | loss:2.5\nStep 1 | lr:0.001\nStep 2 | loss:2.4 lr:0.001 \nnoise\n")
    assert recs == [{"step": 1, "loss": "2.5", "lr": "0.001"}, {"step": 2, "loss": "2.4", "lr": "0.001"}]


def test_rolling_median_ignores_a_spike():
    import numpy as np

    x = np.array([1.0, 1.0, 9.0, 1.0, 1.0])
    assert rolling_median(x, 3).tolist() == [1.0, 1.0, 1.0, 1.0, 1.0]


def test_cli_json_has_verdict_evidence_next(cli):
    code, out, _ = cli("diagnose", LOGS / "synthetic/healthy_hf/trainer_state.json", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["verdict"] == "healthy" and doc["schema_version"] == 1
    assert {"verdict", "evidence", "next", "adapters"} <= set(doc)


def test_cli_human_output(cli):
    code, out, err = cli("diagnose", LOGS / "synthetic/sweep/metrics.jsonl")
    assert code == 0 and out == ""
    assert "r64-a64-lora-lr2e-4" in err and "overfitting" in err and "best adapter" in err


@pytest.mark.parametrize("name,content,needle", [
    ("nolosses.jsonl", '{"step": 1, "foo": 2}\n', "no loss entries"),
    ("evalonly.csv", "step,eval_loss\n1,2.0\n2,1.9\n", "no training loss"),
    ("notes.txt", "hello\nworld\n", "unknown log format"),
    ("run.parquet", "x", "unknown log format"),
    ("state.json", '{"foo": 1}', "unknown log format"),
    ("broken.jsonl", '{"step": 1, "loss": 2\n', "not a JSON object"),
])
def test_bad_logs_are_one_line_errors(tmp_path, cli, name, content, needle):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(LoradialError, match=needle):
        diagnose(path)
    code, out, err = cli("diagnose", path)
    assert code == 2 and out == "" and needle in err and "Traceback" not in err


def test_missing_log_and_config(tmp_path, cli):
    code, _, err = cli("diagnose", tmp_path / "nope.json")
    assert code == 2 and "not found" in err
    code, _, err = cli("diagnose", LOGS / "synthetic/healthy_noisy.csv", "--config", tmp_path / "adapter_config.json")
    assert code == 2 and "adapter config not found" in err


def test_engine_sweep_uses_each_adapters_config():
    r = diagnose(LOGS / "real" / "engine_sweep")
    by = {a.adapter: a for a in r.adapters}
    assert by["underfit"].evidence["config"]["r"] == 8
    steps = {s["action"]: s for s in by["underfit"].next}
    assert steps["double_rank"]["config"] == {"r": 16, "lora_alpha": 16}
    assert steps["raise_lr"]["config"] == {"learning_rate": 2e-6}
    assert "all_linear_targets" not in steps  # the run already targets every linear layer
    unstable = {s["action"]: s for s in by["unstable"].next}
    assert unstable["revisit_alpha"]["config"] == {"lora_alpha": 256}


def test_engine_divergence_mark_is_unstable(tmp_path):
    rows = [{"step": s, "adapter": "a", "loss": 2.0 - 0.01 * s, "lr": 1e-3} for s in range(1, 30)]
    rows.append({"step": 30, "adapter": "a", "loss": float("nan"), "lr": 1e-3, "diverged": True})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    r = diagnose(tmp_path)
    assert r.verdict == "unstable" and r.evidence["diverged_step"] == 30


def test_plain_csv_with_loss_and_eval_in_the_same_rows(tmp_path):
    lines = ["epoch,loss,eval_loss"] + [f"{i / 10},{2.5 * 0.93 ** i + 1:.4f},{2.5 * 0.93 ** i + 1.05:.4f}" for i in range(120)]
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    r = diagnose(tmp_path / "log.csv")
    assert r.format == "csv" and r.evidence["train_points"] == 120 and r.evidence["eval_points"] == 120
    assert r.verdict == "healthy"


# --- divergence is never underfitting; a steep tail is too few steps (issue 13 item 4) ---------------
def _curve_file(tmp_path, loss, grad=None, evals=(), name="log.jsonl"):
    rows = [{"step": i + 1, "loss": v, "lr": 0.3, **({"grad_norm": grad[i]} if grad else {})} for i, v in enumerate(loss)]
    rows += [{"step": s, "eval_loss": e} for s, e in evals]
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_real_lr03_run_is_diverged_and_the_next_step_lowers_the_lr():
    """HF Trainer + PEFT on the demo model at lr 0.3 (tests/data/logs/make_real_diverged.py): loss 6.6 -> 7.2,
    grad norm 173 at step 2 vs a median of 0.12, eval ends above the base model's (the eval at step 0).
    The old rules called it overfitting (its seed-0 twin: unstable by two grad explosions)."""
    for name in ("diverged", "diverged_seed0"):
        r = diagnose(LOGS / "real" / name / "trainer_state.json")
        a = r.adapters[0]
        assert r.verdict == "unstable" and a.flags == ["unstable"], a.flags  # no underfitting, no overfitting
        ev = r.evidence
        assert ev["diverged"] is True and ev["grad_peak_ratio"] >= 100
        assert ev["base_eval_loss"] == pytest.approx(6.474, abs=1e-3) and ev["eval_end"] > ev["base_eval_loss"]
        assert r.summary[0].startswith("diverged:") and "too high" in r.summary[0]
        step = r.next[0]
        assert step["action"] == "lower_lr" and step["config"]["learning_rate"] == pytest.approx(0.03)
        assert all(s["action"] != "raise_lr" for s in r.next)


def test_loss_ending_above_its_start_with_a_grad_explosion_is_unstable(tmp_path):
    # the run: 5.7 -> spike to 13 (grad norm 69) -> back down, ends at 5.9 > 5.7; median grad norm 0.2
    loss = [5.7, 13.0, 9.0, 7.5, 6.8] + [6.2 - 0.01 * i for i in range(35)]
    grad = [1.0, 69.0, 8.0, 2.0, 1.0] + [0.2] * 35
    r = diagnose(_curve_file(tmp_path, loss, grad))
    assert r.verdict == "unstable" and "underfitting" not in r.adapters[0].flags
    assert r.evidence["diverged"] and r.next[0]["action"] == "lower_lr"
    assert r.next[0]["config"] == {"learning_rate": 0.03}
    # the same curve without the explosion: not called diverged (a noisy start, no evidence of an LR problem)
    r = diagnose(_curve_file(tmp_path, loss, [0.2] * 40, name="calm.jsonl"))
    assert not r.evidence.get("diverged")


def test_ending_above_the_base_models_eval_loss_with_exploding_grads(tmp_path):
    loss = [4.0] + [3.9 - 0.002 * i for i in range(39)]  # falls a little...
    grad = [0.3] * 10 + [40.0] + [0.3] * 29                # ...with one explosion
    path = _curve_file(tmp_path, loss, grad)
    assert diagnose(path).verdict != "unstable"
    r = diagnose(path, base_eval_loss=3.5)                # ...but ends above what the base model scored
    assert r.verdict == "unstable" and r.evidence["base_eval_loss"] == 3.5 and r.evidence["diverged"]
    assert "above the base model's eval loss 3.5" in r.summary[0]
    evals = [(0, 3.5), (20, 3.6), (40, 3.7)]                # an eval at step 0 is the base model's
    r = diagnose(_curve_file(tmp_path, loss, grad, evals, name="with_eval.jsonl"))
    assert r.verdict == "unstable" and r.evidence["base_eval_loss"] == 3.5
    assert "overfitting" not in r.adapters[0].flags         # the best eval is the base model's: never improved
    with pytest.raises(LoradialError, match="base eval loss"):
        diagnose(path, base_eval_loss=-1.0)


def test_loss_rising_over_the_run_is_unstable_not_underfitting(tmp_path):
    loss = [2.0 + 0.004 * i for i in range(60)]  # +12% from start to end, no grad norms logged
    r = diagnose(_curve_file(tmp_path, loss))
    assert r.verdict == "unstable" and r.adapters[0].flags == ["unstable"] and r.evidence["diverged"]


def test_steep_noisy_tails_are_too_few_steps_where_the_old_rules_said_healthy():
    old = Thresholds(tail_t_steep=2.0, eval_steep=float("inf"))  # the rules before issue 13
    for rel in ("synthetic/too_few_linear_noisy.jsonl", "synthetic/too_few_eval_falling/trainer_state.json"):
        assert diagnose(LOGS / rel, thresholds=old).verdict == "healthy"
        r = diagnose(LOGS / rel)
        assert r.verdict == "too_few_steps" and r.next[0]["action"] == "train_longer"
    ev = diagnose(LOGS / "synthetic/too_few_eval_falling/trainer_state.json").evidence
    assert ev["eval_tail_change"] <= -0.05


def test_real_short_low_lr_run_is_too_few_steps():
    """HF Trainer + PEFT on the demo model at lr 3e-4 for 40 steps (make_real_diverged.py 'falling'): eval
    6.47 -> 6.11 -> 5.57 -> 4.97 -> 4.69, still falling 5% over the last quarter. The old rules: 'healthy ...
    flattened'."""
    path = LOGS / "real/falling/trainer_state.json"
    assert diagnose(path, thresholds=Thresholds(tail_t_steep=2.0, eval_steep=float("inf"))).verdict == "healthy"
    r = diagnose(path)
    assert r.verdict == "too_few_steps" and r.next[0] == {**r.next[0], "action": "train_longer"}
    assert r.evidence["eval_tail_change"] <= -0.05 and r.evidence["base_eval_loss"] == pytest.approx(6.474, abs=1e-3)
