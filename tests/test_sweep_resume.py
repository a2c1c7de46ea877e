"""kill -9 at several moments of a real `loradial sweep` process, then --resume: the same results.json
numbers, metrics and adapter tensors as an uninterrupted run; nothing retrained, nothing half-written.

The sweep: 4 configs in 2 packs of 2 (--pack-size 2), 6 steps, rungs at steps 2 and 4; rung 2 re-packs
the 2 survivors (from different packs, possibly) into one pack, built from their checkpoints; rung 3
keeps that engine in memory and drops the loser. Kill points (``LORADIAL_SWEEP_KILL``, a real SIGKILL
the process sends itself): mid-pack after a checkpoint, between the two packs of rung 1 (after the
pack's metrics were appended, before state.json records it), and mid-pack in rung 3 (its checkpoint
holds the dropped adapter too).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import loradial
from test_engine_fixtures import pc_records, save_tiny_model, write_jsonl

KILLS = ["step:r0-p0:1", "commit:r0-p1", "step:r2-p0:5"]
NUMBERS = ("trainable_params", "final_train_loss", "best_eval_loss", "final_eval_loss", "gap", "verdict", "steps",
           "stopped_at", "pack")


def sweep_args(model: Path, data: Path) -> dict:
    return dict(ranks=[2, 4], alphas="ratio:1,2", lrs=[5e-3], targets=["q_proj,v_proj,down_proj"], steps=6,
                batch_size=4, max_len=64, eval_every=2, halving=True, halving_at="0.34,0.67", pack_size=2,
                checkpoint_every=1)


def cli_args(model: Path, data: Path, out: Path) -> list[str]:
    return ["sweep", "--model", str(model), "--data", str(data), "--out", str(out), "--ranks", "2,4",
            "--alphas", "ratio:1,2", "--lr", "5e-3", "--targets", "q_proj,v_proj,down_proj", "--steps", "6",
            "--batch-size", "4", "--max-len", "64", "--eval-every", "2", "--halving", "--halving-at", "0.34,0.67",
            "--pack-size", "2", "--checkpoint-every", "1"]


def killed_at(point: str, args: list[str]) -> None:
    src = str(Path(loradial.__file__).parents[1])
    env = dict(os.environ, OMP_NUM_THREADS="1", LORADIAL_SWEEP_KILL=point,
               PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "loradial", *args], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -9, f"{point}: expected SIGKILL, got {proc.returncode}\n{proc.stderr.decode()[-2000:]}"


def check_consistent(out: Path) -> None:
    """Whatever the moment of the kill: a sweep directory, a readable state, only whole adapters."""
    assert (out / "sweep.yaml").is_file() and not (out / "results.json").exists()
    json.loads((out / "state.json").read_text())
    for a in (out / "adapters").iterdir() if (out / "adapters").exists() else []:
        if not a.name.startswith("."):
            assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in a.iterdir()}


def metrics_rows(out: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return sorted(({k: v for k, v in r.items() if k != "elapsed"} for r in rows),
                  key=lambda r: (r["adapter"], r["step"], "eval_loss" in r))


def test_kill_9_anywhere_then_resume_matches_an_uninterrupted_sweep(tmp_path):
    model = save_tiny_model(tmp_path / "model")
    data = write_jsonl(tmp_path / "train.jsonl", pc_records(48))
    torch.set_num_threads(1)
    ref = loradial.sweep(str(model), str(data), out=tmp_path / "ref", **sweep_args(model, data))
    assert ref.settings["halving_boundaries"] == [2, 4, 6] and ref.n_packs == 2
    assert [[len(p) for p in rung] for rung in ref.packs] == [[2, 2], [2], [1]]
    assert sorted(c["stopped_at"] or 6 for c in ref.configs) == [2, 2, 4, 6]

    out = tmp_path / "killed"
    killed_at(KILLS[0], cli_args(model, data, out))
    check_consistent(out)
    for point in KILLS[1:]:
        killed_at(point, ["sweep", "--resume", str(out)])
        check_consistent(out)
    state = json.loads((out / "state.json").read_text())
    assert state["segments_done"] == ["r0-p0", "r0-p1", "r1-p0"] and state["rung"] == 2
    res = loradial.sweep(out=out, resume=True)

    assert res.best == ref.best
    for a, b in zip(res.configs, ref.configs):
        assert a["name"] == b["name"]
        for key in NUMBERS:
            assert a[key] == b[key], (a["name"], key, a[key], b[key])  # bit-exact on the CPU
        wa = load_file(str(out / "adapters" / a["name"] / "adapter_model.safetensors"))
        wb = load_file(str(tmp_path / "ref" / "adapters" / a["name"] / "adapter_model.safetensors"))
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (a["name"], k)
    # every step of every config logged exactly once: finished work was not redone or double-counted
    ra, rb = metrics_rows(out), metrics_rows(tmp_path / "ref")
    assert [(r["adapter"], r["step"], "eval_loss" in r) for r in ra] == [(r["adapter"], r["step"], "eval_loss" in r) for r in rb]
    assert ra == rb
    assert not (out / "work").exists()


def _start(args: list[str]) -> subprocess.Popen:
    src = str(Path(loradial.__file__).parents[1])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    env.pop("LORADIAL_SWEEP_KILL", None)
    return subprocess.Popen([sys.executable, "-m", "loradial", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _resume_or_start(out: Path, model: Path, data: Path) -> list[str]:
    return ["sweep", "--resume", str(out)] if (out / "sweep.yaml").exists() else cli_args(model, data, out)


def _same_as(out: Path, ref: Path, note: str) -> None:
    res, want = json.loads((out / "results.json").read_text()), json.loads((ref / "results.json").read_text())
    assert res["best"] == want["best"], note
    for a, b in zip(res["configs"], want["configs"]):
        assert a["name"] == b["name"]
        for key in NUMBERS:
            assert a[key] == b[key], (note, a["name"], key, a[key], b[key])
        wa = load_file(str(out / "adapters" / a["name"] / "adapter_model.safetensors"))
        wb = load_file(str(ref / "adapters" / a["name"] / "adapter_model.safetensors"))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), (note, a["name"])
    assert metrics_rows(out) == metrics_rows(ref), note


@pytest.mark.slow
def test_kill_9_at_random_moments_from_the_parent_then_resume_matches(tmp_path):
    """Not at hook points: the parent sends SIGKILL at random wall-clock moments of a sweep and of each
    --resume that follows, until the sweep completes; then again on a fresh directory, until
    LORADIAL_RANDOM_KILLS kills (3 by default; LORADIAL_KILL_SEED picks the moments) have landed. Every
    completed sweep gives the uninterrupted run's numbers, metrics and adapters bit for bit, and no
    temporary file of a killed process is left behind."""
    from loradial.io import _TEMP

    n_kills = int(os.environ.get("LORADIAL_RANDOM_KILLS", "3"))
    seed = int(os.environ.get("LORADIAL_KILL_SEED", "16"))
    rng = random.Random(seed)
    model = save_tiny_model(tmp_path / "model")
    data = write_jsonl(tmp_path / "train.jsonl", pc_records(48))
    t0 = time.monotonic()
    ref = _start(cli_args(model, data, tmp_path / "ref"))
    assert ref.wait(timeout=600) == 0, ref.stderr.read().decode()[-2000:]
    duration = time.monotonic() - t0
    kills, cycle = 0, 0
    while kills < n_kills:
        out, moments = tmp_path / f"killed{cycle}", []
        while not (out / "results.json").exists():
            proc = _start(_resume_or_start(out, model, data))
            at = rng.uniform(0.3, 1.0) * duration if len(moments) < 8 else 600  # then let it finish
            try:
                assert proc.wait(timeout=at) == 0, proc.stderr.read().decode()[-2000:]
                moments.append((round(at, 2), "finished first"))
            except subprocess.TimeoutExpired:
                proc.kill()  # SIGKILL
                proc.wait()
                moments.append((round(at, 2), "killed"))
                kills += 1
            if (out / "sweep.yaml").exists() and not (out / "results.json").exists():
                check_consistent(out)
        note = f"seed {seed}, cycle {cycle}: {moments} in a {duration:.1f} s run"
        _same_as(out, tmp_path / "ref", note)
        left = [p for p in [*out.rglob("*"), *tmp_path.iterdir()] if _TEMP.match(p.name)]
        assert not left, (note, left)
        cycle += 1
