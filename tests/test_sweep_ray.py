"""`loradial sweep --ray`: the packs run as Ray tasks (here a private local cluster on the CPU) and give
the same results as the in-process run; bad combinations are one-line errors."""

from __future__ import annotations

import json

import pytest

import loradial
from loradial.errors import LoradialError
from loradial.sweeps.devices import is_ray, kind
from loradial.sweeps.devices import resolve_devices
from test_engine_fixtures import pc_records, save_tiny_model, write_jsonl


def test_device_names():
    assert is_ray(["ray/cuda", "ray/cuda"]) and not is_ray(["cuda:0"]) and not is_ray([])
    assert [kind(d) for d in ("ray/cuda", "ray/cpu", "cuda:1", "cpu")] == ["cuda", "cpu", "cuda", "cpu"]


@pytest.mark.parametrize("devices,ray,workers,msg", [
    (["cpu"], "local", None, "exclude each other"),
    (None, None, 2, "--ray-workers needs --ray"),
    (None, "local", 0, "at least 1"),
])
def test_bad_combinations(devices, ray, workers, msg):
    with pytest.raises(LoradialError, match=msg):
        resolve_devices(devices, ray, workers)


def test_ray_sweep_equals_local_sweep(tmp_path):
    pytest.importorskip("ray", reason="the ray extra is part of CI's install ('.[all,test]')")
    model = save_tiny_model(tmp_path / "model")
    data = write_jsonl(tmp_path / "train.jsonl", pc_records(32))
    kw = dict(ranks=[2, 4], lrs=[5e-3], targets=["q_proj,v_proj"], steps=4, batch_size=4, max_len=64,
              eval_every=2, pack_size=1)  # two packs -> two Ray workers at once
    local = loradial.sweep(str(model), str(data), out=tmp_path / "local", devices=["cpu"], **kw)
    remote = loradial.sweep(str(model), str(data), out=tmp_path / "ray", ray="local", ray_workers=2, **kw)
    assert remote.devices == ["ray/cpu", "ray/cpu"] and len(remote.packs[0]) == 2
    assert remote.best == local.best
    for a, b in zip(sorted(local.configs, key=lambda c: c["name"]), sorted(remote.configs, key=lambda c: c["name"])):
        assert a["name"] == b["name"]
        assert b["final_eval_loss"] == pytest.approx(a["final_eval_loss"], rel=1e-4)
        assert b["final_train_loss"] == pytest.approx(a["final_train_loss"], rel=1e-4)
        adapter = tmp_path / "ray" / "adapters" / b["name"]
        assert json.loads((adapter / "adapter_config.json").read_text())["r"] == b["r"]
        assert (adapter / "adapter_model.safetensors").exists()
