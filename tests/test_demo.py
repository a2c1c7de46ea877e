"""`loradial demo` end to end with few steps: every artifact, improvement over base, a rendered report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import loradial
from loradial.flows.demo import MARKER, prepare_out


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "loradial-demo"
    return loradial.demo(out, steps=12, max_len=48, eval_examples=16)


def test_every_artifact_exists(demo_run):
    root = Path(demo_run.out)
    for rel in ("plan.json", "sweep/results.json", "sweep/metrics.jsonl", "sweep/sweep.yaml",
                "analysis/analysis.json", "analysis/alpha_sweep.json", "report.html", "demo.json", MARKER,
                "data/eval.jsonl"):
        assert (root / rel).is_file(), rel
    assert Path(demo_run.files["best_adapter"], "adapter_model.safetensors").is_file()
    assert len(demo_run.configs) == 8  # 4 ranks x 2 alphas
    assert json.loads((root / "demo.json").read_text())["best"] == demo_run.best
    assert json.loads((root / "sweep/results.json").read_text())["base_eval_loss"] == pytest.approx(demo_run.base_eval_loss)


def test_adapters_beat_base_and_rank_matters(demo_run):
    losses = [c["best_eval_loss"] for c in demo_run.configs]
    assert all(l < demo_run.base_eval_loss for l in losses)
    assert demo_run.best_eval_loss < demo_run.base_eval_loss - 0.1
    by_rank = demo_run.eval_loss_by_rank
    assert set(by_rank) == {"2", "4", "8", "16"}
    assert max(by_rank.values()) - min(by_rank.values()) > 1e-3
    assert not demo_run.notes


def test_alpha_sweep_agrees_with_sweep(demo_run):
    a = json.loads(Path(demo_run.files["alpha_sweep"]).read_text())
    assert a["losses"][a["scales"].index(1.0)] == pytest.approx(demo_run.best_eval_loss, abs=1e-3)


def test_report_renders_all_sections(demo_run):
    html = open(demo_run.report, encoding="utf-8").read()
    assert "<svg" in html and "<script" not in html
    res = loradial.report(demo_run.out, out=demo_run.out + "/again.html")
    assert res.sections == ["sweep", "analysis", "plan"]
    assert res.charts >= 5


def test_refuses_foreign_dir_and_reuses_demo_dir(tmp_path, cli):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    code, out, err = cli("demo", "--out", foreign, "--steps", "1")
    assert code == 2 and "not empty" in err
    assert (foreign / "keep.txt").read_text() == "x"
    old = tmp_path / "old-demo"
    prepare_out(old)
    (old / "stale.json").write_text("{}")
    prepare_out(old)  # a previous demo's directory is cleared
    assert sorted(p.name for p in old.iterdir()) == [MARKER]
    code, _, err = cli("demo", "--out", tmp_path / "x", "--steps", "0")
    assert code == 2 and "--steps" in err
