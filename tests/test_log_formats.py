"""Trainer logs read on the trainer's own step axis: W&B history exports (``train/global_step``, not
W&B's ``_step``), LLaMA-Factory's trainer_log.jsonl (``current_steps``), TensorBoard event files written
by the real writer, and MLflow run directories (file store)."""

from __future__ import annotations

import csv
import json

import pytest

from loradial.advice.logs import read_log

TRAIN = [(10, 2.0), (20, 1.6), (30, 1.4), (40, 1.3)]
EVAL = [(20, 1.7), (40, 1.5)]


def _check(log, fmt):
    c = log.curves["default"]
    assert log.format == fmt
    assert c.steps == [10, 20, 30, 40] and c.loss == pytest.approx([2.0, 1.6, 1.4, 1.3], rel=1e-6)  # TB stores float32
    assert c.eval_steps == [20, 40] and c.eval_loss == pytest.approx([1.7, 1.5], rel=1e-6)


def test_wandb_history_export_uses_the_trainers_step_not_wandbs(tmp_path):
    """W&B's _step counts log calls (eval rows get their own); HF's train/global_step is the step."""
    rows, n = [], 0
    for step, loss in TRAIN:
        rows.append({"_step": n, "_runtime": n * 1.5, "train/global_step": step, "train/loss": loss,
                     "train/learning_rate": 1e-4, "eval/loss": ""})
        n += 1
        for s, ev in EVAL:
            if s == step:
                rows.append({"_step": n, "_runtime": n * 1.5, "train/global_step": step, "train/loss": "",
                             "train/learning_rate": "", "eval/loss": ev})
                n += 1
    with open(tmp_path / "wandb_export.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    _check(read_log(tmp_path / "wandb_export.csv"), "wandb")
    (tmp_path / "history.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if v != ""}) + "\n" for r in rows))
    _check(read_log(tmp_path / "history.jsonl"), "wandb")


def test_llamafactory_trainer_log(tmp_path):
    """LLaMA-Factory's LogCallback lines: current_steps / total_steps with loss or eval_loss."""
    lines = [{"current_steps": s, "total_steps": 40, "loss": l, "lr": 1e-4, "epoch": s / 40, "percentage": s * 2.5,
              "elapsed_time": "0:00:10", "remaining_time": "0:00:30"} for s, l in TRAIN]
    lines += [{"current_steps": s, "total_steps": 40, "eval_loss": e} for s, e in EVAL]
    (tmp_path / "trainer_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    _check(read_log(tmp_path / "trainer_log.jsonl"), "llamafactory")
    _check(read_log(tmp_path), "llamafactory")  # found in its output directory


def test_tensorboard_events_from_the_real_writer(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(log_dir=str(tmp_path / "runs" / "x"))
    for s, l in TRAIN:
        w.add_scalar("train/loss", l, s)
    for s, e in EVAL:
        w.add_scalar("eval/loss", e, s)
    w.close()
    _check(read_log(tmp_path / "runs" / "x"), "tensorboard")
    _check(read_log(next((tmp_path / "runs" / "x").glob("events.out.tfevents.*"))), "tensorboard")


def test_mlflow_run_directory(tmp_path):
    """MLflow's file store: mlruns/<exp>/<run>/metrics/<key>, lines 'timestamp value step'."""
    run = tmp_path / "mlruns" / "0" / "abc123"
    (run / "metrics").mkdir(parents=True)
    (run / "meta.yaml").write_text("run_id: abc123\n")
    (run / "metrics" / "loss").write_text("".join(f"{1700000000000 + s} {l} {s}\n" for s, l in TRAIN))
    (run / "metrics" / "eval_loss").write_text("".join(f"{1700000000000 + s} {e} {s}\n" for s, e in EVAL))
    _check(read_log(run), "mlflow")
