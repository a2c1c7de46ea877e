"""`train --overwrite` replaces the previous run only once the new one is fully built: bad input
(missing data, bad model, unmatched targets, bad settings) leaves the old run intact, and a
rejected run creates no output directory."""

from __future__ import annotations

import json

import pytest

from test_engine_fixtures import pc_records, save_tiny_model, write_jsonl


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("overwrite")
    return {"model": save_tiny_model(d / "model"), "data": write_jsonl(d / "d.jsonl", pc_records(8))}


def _old_run(out):
    (out / "adapters" / "default").mkdir(parents=True)
    (out / "adapters" / "default" / "adapter_config.json").write_text('{"r": 4}')
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    (out / "train_result.json").write_text('{"steps": 1}')
    (out / "checkpoint").mkdir()
    (out / "checkpoint" / "state.json").write_text("{}")
    return {p.relative_to(out).as_posix(): p.read_text() for p in out.rglob("*") if p.is_file()}


def _args(files, out, **change):
    kw = {"--model": files["model"], "--data": files["data"], "--rank": "2", "--alpha": "4", "--steps": "1",
          "--batch-size": "4", "--targets": "q_proj", "--out": out, **change}
    return ["train", *[str(x) for kv in kw.items() for x in kv], "--overwrite"]


@pytest.mark.parametrize("change, needle", [
    ({"--data": "missing.jsonl"}, "missing.jsonl"),
    ({"--model": "./no-such-model"}, "no-such-model"),
    ({"--targets": "nope"}, "match no module"),
    ({"--save-every": "0"}, "--save-every"),
], ids=["data", "model", "targets", "save-every"])
def test_bad_input_with_overwrite_keeps_the_previous_run(files, cli, tmp_path, monkeypatch, change, needle):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    before = _old_run(out)
    code, _, stderr = cli(*_args(files, out, **change))
    assert code == 2 and needle in stderr and "Traceback" not in stderr
    after = {p.relative_to(out).as_posix(): p.read_text() for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_good_input_with_overwrite_replaces_the_previous_run(files, cli, tmp_path):
    out = tmp_path / "run"
    _old_run(out)
    (out / "notes.txt").write_text("mine")
    code, _, stderr = cli(*_args(files, out))
    assert code == 0, stderr
    assert json.loads((out / "train_result.json").read_text())["steps"] == 1
    assert json.loads((out / "adapters" / "default" / "adapter_config.json").read_text())["r"] == 2
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert not (out / "checkpoint").exists()  # the old run's checkpoint is gone (no --save-every now)
    assert (out / "notes.txt").read_text() == "mine"  # files loradial did not write are left alone


def test_rejected_run_creates_no_output_directory(files, cli, tmp_path):
    out = tmp_path / "trt"
    args = _args(files, out, **{"--targets": "nope"})
    code, _, stderr = cli(*args[:-1])  # without --overwrite
    assert code == 2 and "match no module" in stderr
    assert not out.exists()
