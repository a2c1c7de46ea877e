"""Mutated adapters (truncated or corrupt files, wrong shapes, bad JSON, NaN, wrong dtypes, missing keys):
only a LoradialError comes out, and a failed resize/rescale writes nothing."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from loradial.adapters.format import CONFIG_NAME, SAFETENSORS_NAME, load_adapter
from loradial.adapters.analysis import analyze
from loradial.errors import LoradialError
from loradial.adapters.surgery import rescale, resize
from test_adapter_support import peft_adapter

TENSOR_MUTATIONS = ("drop", "nan", "inf", "int", "bool", "fp8", "shape_rows", "shape_cols", "rank_both", "scalar", "conv4d")
FILE_MUTATIONS = ("truncate", "flip_bytes", "delete_weights", "delete_config", "empty_weights")
CONFIG_MUTATIONS = ("bad_json", "drop_r", "drop_alpha", "r_str", "r_neg", "alpha_str", "pattern_list",
                    "pattern_bad_regex", "peft_type", "not_object", "rank_pattern_wrong")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    _, path = peft_adapter(tmp, name="src", arch="llama", r=4, lora_alpha=8,
                           target_modules=["q_proj", "v_proj", "embed_tokens"], use_dora=False)
    return path


def _mutate_tensors(path: Path, kind: str, pick: int, value: float) -> None:
    f = path / SAFETENSORS_NAME
    t = load_file(str(f))
    keys = sorted(k for k in t if "lora" in k)
    key = keys[pick % len(keys)]
    x = t[key]
    if kind == "drop":
        del t[key]
    elif kind in ("nan", "inf"):
        x = x.clone()
        x.view(-1)[pick % x.numel()] = float("nan") if kind == "nan" else float("inf") * (1 if value > 0 else -1)
        t[key] = x
    elif kind == "int":
        t[key] = (x * 100).to(torch.int64)
    elif kind == "bool":
        t[key] = x > 0
    elif kind == "fp8":
        t[key] = x.to(torch.float8_e4m3fn)
    elif kind == "shape_rows":
        t[key] = torch.cat([x, x[:1]], 0)
    elif kind == "shape_cols":
        t[key] = torch.cat([x, x[:, :1]], 1)
    elif kind == "rank_both":  # consistent A/B but rank disagreeing with the config
        for k in keys:
            if k.endswith(("lora_A.weight", "lora_embedding_A")):
                t[k] = t[k][:-1].contiguous()
            elif k.endswith(("lora_B.weight", "lora_embedding_B")):
                t[k] = t[k][:, :-1].contiguous()
    elif kind == "scalar":
        t[key] = torch.tensor(value)
    elif kind == "conv4d":
        t[key] = x[:, :, None, None].contiguous()
    save_file(t, str(f))


def _mutate_file(path: Path, kind: str, frac: float, pick: int) -> None:
    f = path / SAFETENSORS_NAME
    data = bytearray(f.read_bytes())
    if kind == "truncate":
        f.write_bytes(bytes(data[: int(len(data) * frac)]))
    elif kind == "flip_bytes":
        for i in range(1 + pick % 8):
            j = int((frac * len(data) + 9973 * i)) % min(len(data), 400)  # the header region
            data[j] ^= 0xFF
        f.write_bytes(bytes(data))
    elif kind == "delete_weights":
        f.unlink()
    elif kind == "delete_config":
        (path / CONFIG_NAME).unlink()
    elif kind == "empty_weights":
        f.write_bytes(b"")


def _mutate_config(path: Path, kind: str, frac: float) -> None:
    f = path / CONFIG_NAME
    text = f.read_text()
    cfg = json.loads(text)
    if kind == "bad_json":
        f.write_text(text[: int(len(text) * frac)])
        return
    if kind == "not_object":
        f.write_text("[1, 2]")
        return
    edits = {
        "drop_r": lambda c: c.pop("r"),
        "drop_alpha": lambda c: c.pop("lora_alpha"),
        "r_str": lambda c: c.__setitem__("r", "four"),
        "r_neg": lambda c: c.__setitem__("r", -4),
        "alpha_str": lambda c: c.__setitem__("lora_alpha", "8"),
        "pattern_list": lambda c: c.__setitem__("rank_pattern", ["q_proj"]),
        "pattern_bad_regex": lambda c: c.__setitem__("alpha_pattern", {"q_proj(": 3}),
        "peft_type": lambda c: c.__setitem__("peft_type", "IA3"),
        "rank_pattern_wrong": lambda c: c.__setitem__("rank_pattern", {"q_proj": 2}),
    }
    edits[kind](cfg)
    f.write_text(json.dumps(cfg))


MUTATION = st.one_of(
    st.tuples(st.just("tensor"), st.sampled_from(TENSOR_MUTATIONS)),
    st.tuples(st.just("file"), st.sampled_from(FILE_MUTATIONS)),
    st.tuples(st.just("config"), st.sampled_from(CONFIG_MUTATIONS)),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=MUTATION, frac=st.floats(0.0, 0.999), pick=st.integers(0, 1000), value=st.floats(-3, 3),
       verb=st.sampled_from(["load", "resize", "rescale", "analyze"]))
def test_mutations_give_clean_errors_and_write_nothing(source, mutation, frac, pick, value, verb):
    work = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        path = work / "adapter"
        shutil.copytree(source, path)
        where, kind = mutation
        if where == "tensor":
            _mutate_tensors(path, kind, pick, value)
        elif where == "file":
            _mutate_file(path, kind, frac, pick)
        else:
            _mutate_config(path, kind, frac)
        outdir = work / "outputs"
        outdir.mkdir()
        out = outdir / "out"
        try:
            if verb == "load":
                load_adapter(path)
            elif verb == "resize":
                resize(path, out, rank=2)
            elif verb == "rescale":
                rescale(path, out, scale=0.5)
            else:
                analyze(path)
        except LoradialError as e:
            assert e.message and e.exit_code == 2
            assert list(outdir.iterdir()) == []  # nothing written, no temporary leftovers
        else:
            # a harmless mutation (e.g. a flipped byte inside a value): the outputs must be whole
            if verb in ("resize", "rescale"):
                assert {CONFIG_NAME, SAFETENSORS_NAME} <= {p.name for p in out.iterdir()}
                load_adapter(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
