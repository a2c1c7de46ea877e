"""Two sweeps started at the same moment into one new --out: one runs to a clean result, the other is
refused with exit 2 before it writes anything — every time (issue: the second used to replace the
first's directory and leave a corrupted "finished" sweep)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import loradial
from test_engine_fixtures import pc_records, save_tiny_model, write_jsonl

ROUNDS = int(os.environ.get("LORADIAL_CONCURRENCY_ROUNDS", "3"))


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("concurrent")
    return save_tiny_model(root / "model"), write_jsonl(root / "train.jsonl", pc_records(24))


@pytest.mark.parametrize("verb", ["sweep", "tune"])
def test_two_starts_into_one_out_give_one_result_and_one_refusal(assets, tmp_path, verb):
    model, data = assets
    src = str(Path(loradial.__file__).parents[1])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    extra = (["--ranks", "2,4", "--steps", "2", "--lr", "5e-3"] if verb == "sweep" else
             ["--rank", "2", "--lr", "5e-3", "--steps", "8", "--no-rank-check"])
    for i in range(ROUNDS if verb == "sweep" else 1):
        out = tmp_path / f"out{i}"
        args = [sys.executable, "-m", "loradial", verb, "--model", str(model), "--data", str(data), "--out", str(out),
                "--targets", "q_proj,v_proj", "--batch-size", "2", "--max-len", "32", "--json", *extra]
        procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
        done = [(p.wait(timeout=600), p.stdout.read().decode(), p.stderr.read().decode()) for p in procs]
        codes = sorted(code for code, _, _ in done)
        assert codes == [0, 2], [(c, e[-1500:]) for c, _, e in done]
        ok = next(o for c, o, _ in done if c == 0)
        refused = next(e for c, _, e in done if c == 2)
        assert "is starting or running in" in refused and "Traceback" not in refused
        result = json.loads(ok)
        results = out / "results.json" if verb == "sweep" else out / "tune.json"
        assert json.loads(results.read_text()) == result
        if verb == "sweep":
            assert all(c["status"] == "done" for c in json.loads((out / "state.json").read_text())["configs"].values())
            assert len(result["configs"]) == 2 and all(c["final_eval_loss"] is not None for c in result["configs"])
