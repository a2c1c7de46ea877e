"""The sweep's full variant: the grid, the refusal when full fine-tuning does not fit, results against
full FT, and kill -9 + --resume of a sweep holding a full config (the pattern of test_sweep_resume.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import loradial
from loradial.errors import LoradialError
from loradial.sweeps.grid import build_grid
from loradial.sweeps.results import full_ft_comparison
from test_engine_fixtures import pc_records, save_tiny_model, write_jsonl
from test_sweep_resume import NUMBERS, check_consistent, killed_at, metrics_rows


def test_grid_adds_one_full_config_per_full_lr():
    names = [c.name for c in build_grid([4, 8], None, ["lora", "full"], lrs=[2e-3, 4e-3])]
    assert names == ["r4-a4-lora-lr2e-3", "r4-a4-lora-lr4e-3", "r8-a8-lora-lr2e-3", "r8-a8-lora-lr4e-3",
                     "full-lr2e-4", "full-lr4e-4"]  # default: the LoRA grid / 10
    full = build_grid([4], None, ["lora", "full"], lrs=[2e-3], full_lrs=[1e-5, 3e-5])
    assert [(c.name, c.r, c.learning_rate) for c in full if c.variant == "full"] == [("full-lr1e-5", 0, 1e-5),
                                                                                     ("full-lr3e-5", 0, 3e-5)]
    with pytest.raises(LoradialError, match="full-lrs"):
        build_grid([4], None, ["lora"], lrs=[2e-3], full_lrs=[1e-5])


def test_gain_fractions_and_smallest_rank_within_one_percent():
    cfg = lambda name, r, loss, variant="lora", **kw: dict(name=name, r=r, variant=variant, best_eval_loss=loss,
                                                         trainable_params=10 * r or 1000, peak_memory_bytes=None,
                                                         train_seconds=1.0, learning_rate=1e-3, **kw)
    configs = [cfg("a", 4, 2.5), cfg("b", 8, 2.02), cfg("c", 16, 2.005), cfg("f", 0, 2.0, "full")]
    out = full_ft_comparison(configs, {}, base_eval_loss=3.0)
    assert [c["full_ft_gain_fraction"] for c in configs[:3]] == pytest.approx([0.5, 0.98, 0.995])
    assert "full_ft_gain_fraction" not in configs[3]
    assert out["config"] == "f" and out["gain"] == pytest.approx(1.0)
    assert out["smallest_rank_within_1pct"] == 8  # 2.02 <= 2.0 * 1.01; 2.5 is not
    assert [p["params_vs_full"] for p in out["per_rank"]] == pytest.approx([0.04, 0.08, 0.16])
    # the base loss from the full config's eval at step 0 when tune did not measure it
    out = full_ft_comparison(configs, {"f": {"eval": [(0, 4.0), (6, 2.0)]}})
    assert out["base_eval_loss"] == 4.0 and configs[0]["full_ft_gain_fraction"] == pytest.approx(0.75)


def _cli(model, data, out, *extra):
    return ["sweep", "--model", str(model), "--data", str(data), "--out", str(out), "--ranks", "2,4", "--lr", "5e-3",
            "--variants", "lora,full", "--full-lrs", "1e-3", "--targets", "q_proj,v_proj", "--steps", "4",
            "--batch-size", "4", "--max-len", "64", "--eval-every", "2", "--halving", "--halving-at", "0.5",
            "--checkpoint-every", "1", *extra]


def test_full_refused_when_it_does_not_fit(tmp_path):
    from loradial.cost.memory import WORKSPACE_BYTES

    model = save_tiny_model(tmp_path / "model")
    data = write_jsonl(tmp_path / "train.jsonl", pc_records(24))
    budget = (WORKSPACE_BYTES + 0.8e6) / 2**30  # LoRA on the tiny model fits; full FT (fp32 states) does not
    base = ["--model", str(model), "--data", str(data), "--ranks", "2", "--lr", "5e-3", "--targets", "q_proj,v_proj",
            "--steps", "1", "--batch-size", "4", "--max-len", "64", "--gpu-memory", f"{budget:.9f}"]
    run = lambda *a: subprocess.run([sys.executable, "-m", "loradial", "sweep", *base, *a], capture_output=True,
                                    text=True, timeout=300)
    proc = run("--variants", "lora,full", "--out", str(tmp_path / "refused"))
    assert proc.returncode == 2, proc.stderr
    assert "full fine-tuning (full-lr5e-4) needs about" in proc.stderr and "hint:" in proc.stderr
    assert not (tmp_path / "refused").exists()
    assert run("--variants", "lora", "--out", str(tmp_path / "ok")).returncode == 0


def test_kill_9_then_resume_with_a_full_config_matches(tmp_path):
    model = save_tiny_model(tmp_path / "model")
    data = write_jsonl(tmp_path / "train.jsonl", pc_records(32))
    torch.set_num_threads(1)
    ref_out = tmp_path / "ref"
    assert subprocess.run([sys.executable, "-m", "loradial", *_cli(model, data, ref_out)], capture_output=True,
                          timeout=300).returncode == 0
    ref = json.loads((ref_out / "results.json").read_text())
    assert [[len(p) for p in rung] for rung in ref["packs"]] == [[2, 1], [1, 1]]
    full = next(c for c in ref["configs"] if c["variant"] == "full")
    assert full["stopped_at"] is None and full["steps"] == 4  # halving never stops the reference
    assert all(c["full_ft_gain_fraction"] is not None for c in ref["configs"] if c["variant"] != "full")
    assert ref["full_ft"]["config"] == "full-lr1e-3" and ref["full_ft"]["base_eval_loss"] > full["best_eval_loss"]

    out = tmp_path / "killed"
    killed_at("step:r0-p1:1", _cli(model, data, out))  # mid full segment, after its checkpoint
    for point in ("commit:r0-p1", "step:r1-p1:3", "trained:r1-p1"):
        check_consistent(out)
        killed_at(point, ["sweep", "--resume", str(out)])
    res = loradial.sweep(out=out, resume=True).to_dict()
    assert res["best"] == ref["best"] and res["full_ft"] | {"train_seconds": 0, "per_rank": 0} == \
        ref["full_ft"] | {"train_seconds": 0, "per_rank": 0}
    for a, b in zip(res["configs"], ref["configs"]):
        assert a["name"] == b["name"]
        for key in (*NUMBERS, "full_ft_gain_fraction"):
            assert a.get(key) == b.get(key), (a["name"], key)
    assert metrics_rows(out) == metrics_rows(ref_out)
    wa = load_file(str(out / "adapters" / "full-lr1e-3" / "model.safetensors"))
    wb = load_file(str(ref_out / "adapters" / "full-lr1e-3" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_tune_with_the_full_variant(tmp_path):
    """tune --variants lora,full: full FT trains beside the search to the full step count and is never the answer."""
    demo = Path(loradial.__file__).parent / "assets"
    lines = (demo / "demo-data" / "train.jsonl").read_text().splitlines()[:64]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    res = loradial.tune(str(demo / "demo-model"), str(tmp_path / "train.jsonl"), out=tmp_path / "t", rank=4, lr=2e-3,
                        steps=8, batch_size=4, max_len=48, eval_fraction=0.25, targets="q_proj,v_proj",
                        variants=["lora", "full"], full_lrs=[2e-4], rank_check=False)
    full = [c for c in res.configs if c["variant"] == "full"]
    assert [c["name"] for c in full] == ["full-lr2e-4"] and full[0]["steps"] == 8
    assert res.best_config["name"] != "full-lr2e-4" and res.full_ft["config"] == "full-lr2e-4"
    assert res.full_ft["base_eval_loss"] == pytest.approx(res.base_eval_loss, rel=1e-4)
    assert all("full_ft_gain_fraction" in c for c in res.configs if c["variant"] != "full")
    assert all(s["stage"] != "explore" or "full-lr2e-4" not in s["configs"] for s in res.stages)
