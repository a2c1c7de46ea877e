"""Nothing lost, nothing silently wrong (issue 16): no verb deletes or replaces its inputs, no
non-finite number is published, one error boundary (a full or read-only disk, a corrupt input, bad
flags: one line and a hint, never a traceback), temporaries of a killed run are cleaned up, every
output has the same mode. docs/reliability.md lists these guarantees with the tests below."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import io_walk
from test_adapter_support import peft_adapter, save_base, tiny_model
from test_engine_fixtures import pc_records, save_tiny_model, write_jsonl

TESTS = Path(__file__).resolve().parent
REPORT_SWEEP = TESTS / "data" / "report" / "demo" / "sweep"


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    d = tmp_path_factory.mktemp("reliab")
    model = save_tiny_model(d / "model")
    _, adapter = peft_adapter(d, name="adapter", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    sweep = shutil.copytree(REPORT_SWEEP, d / "sweep")
    results = json.loads((sweep / "results.json").read_text())  # the report fixture, made exportable
    for c in results["configs"]:
        c.setdefault("target_modules", ["q_proj", "v_proj"])
    (sweep / "results.json").write_text(json.dumps(results))
    rules = d / "rules.yaml"
    rules.write_text("{}\n")
    (d / "data").mkdir()
    return SimpleNamespace(dir=d, model=model, adapter=Path(adapter), sweep=Path(sweep), rules=rules,
                           data=write_jsonl(d / "data" / "d.jsonl", pc_records(16)),
                           eval=write_jsonl(d / "e.jsonl", pc_records(4, seed=5)))


def snapshot(*paths: Path) -> dict[str, str]:
    """Path -> sha256 of every file under ``paths`` (the inputs a verb must leave as they were)."""
    out = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def clean_error(code: int, err: str, expected: int) -> None:
    """One error line and a hint on stderr, the expected exit code, no traceback."""
    assert code == expected, err
    assert "Traceback" not in err and "error:" in err and "hint:" in err, err


# --- 2. no verb deletes or replaces its inputs ----------------------------------------------------
def _link(target: Path, tmp: Path) -> Path:
    link = tmp / "link"
    link.symlink_to(target, target_is_directory=True)
    return link


OVERLAPS = {
    "resize-out-is-adapter": lambda w, t: ["resize", w.adapter, "--rank", "2", "--out", w.adapter, "--overwrite"],
    "resize-out-contains-adapter": lambda w, t: ["resize", w.adapter, "--rank", "2", "--out", w.dir, "--overwrite"],
    "resize-out-inside-adapter": lambda w, t: ["resize", w.adapter, "--rank", "2", "--out", w.adapter / "x", "--overwrite"],
    "resize-out-symlink-to-adapter": lambda w, t: ["resize", w.adapter, "--rank", "2", "--out", _link(w.adapter, t), "--overwrite"],
    "rescale-out-is-adapter": lambda w, t: ["rescale", w.adapter, "--scale", "2", "--out", w.adapter, "--overwrite"],
    "rescale-out-contains-adapter": lambda w, t: ["rescale", w.adapter, "--scale", "2", "--out", w.dir, "--overwrite"],
    "merge-out-is-model": lambda w, t: ["merge", w.adapter, "--model", w.model, "--out", w.model, "--overwrite"],
    "merge-out-symlink-to-model": lambda w, t: ["merge", w.adapter, "--model", w.model, "--out", _link(w.model, t), "--overwrite"],
    "merge-out-contains-both": lambda w, t: ["merge", w.adapter, "--model", w.model, "--out", w.dir, "--overwrite"],
    "train-out-is-model": lambda w, t: ["train", "--model", w.model, "--data", w.data, "--rank", "2", "--alpha", "4",
                                        "--steps", "1", "--out", w.model, "--overwrite"],
    "train-out-contains-data": lambda w, t: ["train", "--model", w.model, "--data", w.data, "--rank", "2", "--alpha", "4",
                                             "--steps", "1", "--out", w.data.parent, "--overwrite"],
    "sweep-out-inside-model": lambda w, t: ["sweep", "--model", w.model, "--data", w.data, "--ranks", "2", "--steps", "1",
                                            "--out", w.model / "sweep"],
    "export-out-is-results": lambda w, t: ["export", w.sweep, "--format", "peft", "--out", w.sweep / "results.json"],
    "report-out-is-results": lambda w, t: ["report", w.sweep, "--out", w.sweep / "results.json"],
    "report-out-is-metrics": lambda w, t: ["report", w.sweep, "--out", w.sweep / "metrics.jsonl"],
    "recommend-out-is-rules": lambda w, t: ["recommend", "--model", "llama-2-7b", "--task", "standard", "--examples", "1000",
                                            "--rules", w.rules, "--export", "peft", "--out", w.rules],
}


@pytest.mark.parametrize("case", list(OVERLAPS))
def test_no_verb_deletes_or_replaces_its_inputs(w, cli, tmp_path, case):
    """An --out equal to, containing or inside an input (symlinks resolved) is exit 2, --overwrite or not."""
    before = snapshot(w.adapter, w.model, w.data.parent, w.sweep, w.rules)
    code, out, err = cli(*OVERLAPS[case](w, tmp_path))
    clean_error(code, err, 2)
    assert "could delete or replace it" in err and out == ""
    assert snapshot(w.adapter, w.model, w.data.parent, w.sweep, w.rules) == before
    assert not (w.model / "sweep").exists() and not (w.adapter / "x").exists()


# --- 3. every numeric output is finite ----------------------------------------------------------------
def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_rescale_overflow_is_exit_1_naming_the_module_and_writes_nothing(w, cli, tmp_path):
    code, _, err = cli("rescale", w.adapter, "--scale", "1e300", "--fold", "--out", tmp_path / "r")
    clean_error(code, err, 1)
    assert "non-finite" in err and "lora_B" in err and "self_attn" in err
    assert not (tmp_path / "r").exists() and _leftovers(tmp_path) == []


def test_merge_overflowing_the_base_dtype_is_exit_1_and_writes_nothing(tmp_path, cli):
    """A float16 base: W + s·B·A beyond 65504 would be Inf in the merged model."""
    base = save_base(tiny_model("llama").half(), tmp_path, "half")
    pm, adapter = peft_adapter(tmp_path, name="big", r=2, lora_alpha=4, target_modules=["q_proj"])
    from safetensors.torch import load_file, save_file

    st = Path(adapter) / "adapter_model.safetensors"
    tensors = {k: (v * 1e6 if "lora_B" in k else v) for k, v in load_file(str(st)).items()}
    save_file(tensors, str(st))
    code, _, err = cli("merge", adapter, "--model", base, "--out", tmp_path / "m")
    clean_error(code, err, 1)
    assert "non-finite" in err and "q_proj" in err
    assert not (tmp_path / "m").exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("verb", ["train", "sweep"])
def test_a_non_finite_trained_adapter_is_never_published(w, cli, tmp_path, monkeypatch, verb):
    """The engine keeps a diverged adapter's last finite weights; should NaN reach an export anyway,
    save_adapter (which every adapter writer goes through) refuses it."""
    from loradial.engine.trainer import Engine

    real = Engine.export_adapter

    def poisoned(self, name):
        ad = real(self, name)
        m = next(iter(ad.modules.values()))
        m.B[0, 0] = float("nan")
        return ad

    monkeypatch.setattr(Engine, "export_adapter", poisoned)
    out = tmp_path / "run"
    args = (["train", "--rank", "2", "--alpha", "4"] if verb == "train" else ["sweep", "--ranks", "2", "--devices", "cpu"])
    code, _, err = cli(*args, "--model", w.model, "--data", w.data, "--steps", "1", "--batch-size", "2",
                       "--max-len", "32", "--out", out)
    clean_error(code, err, 1)
    assert "non-finite" in err and "lora_B" in err
    assert not list(out.rglob("adapter_model.safetensors")) if out.exists() else True


def test_check_finite_counts_and_names():
    from loradial.errors import LoradialError
    from loradial.io import check_finite

    check_finite({"a": torch.ones(3), "i": torch.arange(3), "n": 1.5}, "x")
    big = torch.full((4,), 3e38)  # finite, but its float32 sum overflows: the entrywise test decides
    check_finite({"big": big}, "x")
    with pytest.raises(LoradialError, match=r"2 non-finite values .* in m\.lora_B \(2x2\)") as e:
        check_finite({"ok": torch.ones(2), "m.lora_B": torch.tensor([[1.0, float("inf")], [float("nan"), 0.0]])}, "x")
    assert e.value.exit_code == 1


# --- 4. one error boundary: full and read-only disks, every verb -----------------------------------------
def _can_mount(tmp: Path) -> bool:
    if not shutil.which("unshare") or not shutil.which("mount"):
        return False
    probe = tmp / "probe"
    probe.mkdir()
    r = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=16k tmpfs {probe}"],
                       capture_output=True, timeout=30)
    return r.returncode == 0


def _walk_on_tmpfs(w, tmp: Path, scenario: str) -> tuple[list[str], dict]:
    parent = tmp / scenario
    parent.mkdir()
    world = tmp / "world.json"
    world.write_text(json.dumps({k: str(getattr(w, k)) for k in ("adapter", "model", "data", "sweep")}))
    result = tmp / f"{scenario}.json"
    mount = (f"mount -t tmpfs -o ro,size=16k tmpfs {parent}" if scenario == "ro" else
             f"mount -t tmpfs -o size=64k tmpfs {parent} && (head -c 1M /dev/zero > {parent}/filler 2>/dev/null; true)")
    # the listing runs inside the namespace: outside it the mount (and what was left on it) is gone
    script = (f"{mount} && {sys.executable} {TESTS / 'io_walk.py'} {world} {parent} {result} && "
              f"(cd {parent} && find . -mindepth 1 -type f) > {tmp / (scenario + '.ls')}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    left = (tmp / (scenario + ".ls")).read_text().split()
    return left, json.loads(result.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["tmpfs", "patched"])
@pytest.mark.parametrize("scenario", ["ro", "full"])
def test_every_verb_on_a_read_only_or_full_disk_is_one_line_exit_1(w, tmp_path, mode, scenario):
    """resize, rescale, merge, train, sweep, export, report, recommend and demo writing to a read-only
    filesystem or a full one: exit 1, one line naming the cause and a hint, no traceback, and nothing
    left behind but (on a full disk, where names can still be made) a training run's own log.
    'tmpfs': real mounts in a private mount namespace (skipped where the test cannot mount);
    'patched': the writers fail as those filesystems make them fail (runs everywhere)."""
    if mode == "tmpfs":
        if not _can_mount(tmp_path):
            pytest.skip("cannot mount a tmpfs here (the 'patched' case covers it)")
        left, results = _walk_on_tmpfs(w, tmp_path, scenario)
    else:
        parent = tmp_path / scenario
        parent.mkdir()
        world = {k: str(getattr(w, k)) for k in ("adapter", "model", "data", "sweep")}
        with io_walk.patched(parent, scenario):
            results = io_walk.run_all(world, parent)
        left = ["./" + str(p.relative_to(parent)) for p in parent.rglob("*") if p.is_file()]
    assert set(results) == set(io_walk.commands({k: "x" for k in ("adapter", "model", "data", "sweep")}, tmp_path))
    cause = "Read-only file system" if scenario == "ro" else "No space left on device"
    for verb, r in results.items():
        assert r["exception"] is None, (verb, r["exception"])
        clean_error(r["code"], r["stderr"], 1)
        assert cause in r["stderr"], (verb, r["stderr"])
        assert r["stdout"] == "", verb
    # nothing half-written, no temporaries: no file is left but the filler and a training run's own log
    assert [f for f in left if f not in ("./filler", "./train/metrics.jsonl")] == [], left


def test_boundary_maps_every_kind_of_failure():
    from loradial.cli.common import boundary_error

    ro = boundary_error(OSError(errno.EROFS, "Read-only file system", "/x/out"))
    assert ro.exit_code == 1 and "Read-only" in ro.message and "/x/out" in ro.message and "writable" in ro.hint
    full = boundary_error(OSError(errno.ENOSPC, "No space left on device"))
    assert full.exit_code == 1 and "space" in full.hint
    gone = boundary_error(FileNotFoundError(errno.ENOENT, "No such file or directory", "nowhere"))
    assert gone.exit_code == 2
    rust = type("SafetensorError", (Exception,), {})
    assert boundary_error(rust("Error while deserializing header: incomplete metadata")).exit_code == 2
    wrapped = boundary_error(rust('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space" })'))
    assert wrapped.exit_code == 1 and "space" in wrapped.hint
    assert boundary_error(json.JSONDecodeError("Expecting value", "{", 1)).exit_code == 2
    oom = boundary_error(RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"))
    assert oom.exit_code == 1 and "--batch-size" in oom.hint
    assert boundary_error(torch.OutOfMemoryError("CUDA out of memory")).exit_code == 1
    bug = boundary_error(TypeError("'<' not supported"))
    assert bug.exit_code == 1 and bug.message.startswith("internal error: TypeError") and "LORADIAL_DEBUG" in bug.hint


def test_an_unexpected_error_is_one_line_and_debug_reraises(w, cli, monkeypatch):
    import loradial.adapters.surgery as surgery

    def boom(*a, **k):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(surgery, "resize", boom)
    code, _, err = cli("resize", w.adapter, "--rank", "2", "--out", w.dir / "never")
    clean_error(code, err, 1)
    assert "internal error: ZeroDivisionError: boom" in err
    monkeypatch.setenv("LORADIAL_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        cli("resize", w.adapter, "--rank", "2", "--out", w.dir / "never")


@pytest.mark.parametrize("verb, extra, needle", [
    ("sweep", ["--model", "M", "--data", "D", "--ranks", "2", "--steps", "1", "--out", "S"], "loradial sweep --resume S"),
    ("train", ["--model", "M", "--data", "D", "--rank", "2", "--alpha", "4", "--steps", "1", "--save-every", "1",
               "--out", "T"], "loradial train --resume T"),
])
def test_interrupt_names_the_resume_command(cli, monkeypatch, tmp_path, verb, extra, needle):
    import loradial
    import loradial.sweeps.api

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loradial.sweeps.api, "sweep", interrupted)
    monkeypatch.setattr(loradial, "train", interrupted)
    code, _, err = cli(verb, *extra)
    assert code == 130 and "interrupted" in err and needle in err and "Traceback" not in err


# --- 4/5. the bad inputs of the issue, and every numeric flag's range ------------------------------------
def _truncated_model(w, tmp: Path) -> Path:
    bad = shutil.copytree(w.model, tmp / "truncated")
    st = bad / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    return bad


TRAIN = lambda w: ["train", "--model", w.model, "--data", w.data, "--rank", "2", "--alpha", "4"]  # noqa: E731
SWEEP = lambda w: ["sweep", "--model", w.model, "--data", w.data, "--ranks", "2", "--devices", "cpu"]  # noqa: E731
EVAL = lambda w: ["alpha-sweep", w.adapter, "--model", w.model, "--data", w.eval]  # noqa: E731

BAD_INPUTS = {
    # (argv builder (w, tmp) -> argv, needle in the message)
    "merge --max-shard-size bogus": (lambda w, t: ["merge", w.adapter, "--model", w.model, "--out", t / "o",
                                                   "--max-shard-size", "bogus"], "--max-shard-size"),
    "merge --max-shard-size 0": (lambda w, t: ["merge", w.adapter, "--model", w.model, "--out", t / "o",
                                               "--max-shard-size", "0"], "--max-shard-size"),
    "export --out EXISTING_DIR": (lambda w, t: ["export", w.sweep, "--format", "peft", "--out", t], "is a directory"),
    "export --out ''": (lambda w, t: ["export", w.sweep, "--format", "peft", "--out", ""], "directory"),
    "report --out ''": (lambda w, t: ["report", w.sweep, "--out", ""], "directory"),
    "recommend --out ''": (lambda w, t: ["recommend", "--model", "llama-2-7b", "--task", "standard", "--examples", "100",
                                         "--export", "peft", "--out", ""], "directory"),
    "resize --out ''": (lambda w, t: ["resize", w.adapter, "--rank", "2", "--out", ""], "--out"),
    "merge --out ''": (lambda w, t: ["merge", w.adapter, "--model", w.model, "--out", ""], "--out"),
    "train --out ''": (lambda w, t: [*TRAIN(w), "--steps", "1", "--out", ""], "output"),
    "demo --threads -1": (lambda w, t: ["demo", "--threads", "-1", "--out", t / "d"], "--threads"),
    "demo --steps 0": (lambda w, t: ["demo", "--steps", "0", "--out", t / "d"], "--steps"),
    "train --rank 1000000000": (lambda w, t: [*TRAIN(w)[:5], "--rank", "1000000000", "--alpha", "4", "--steps", "1",
                                              "--out", t / "o"], "rank 1,000,000,000 exceeds"),
    "train --epochs 0": (lambda w, t: [*TRAIN(w), "--epochs", "0", "--out", t / "o"], "--epochs"),
    "train --steps 0": (lambda w, t: [*TRAIN(w), "--steps", "0", "--out", t / "o"], "--steps"),
    "train --eval-every 0": (lambda w, t: [*TRAIN(w), "--steps", "1", "--eval-every", "0", "--eval-fraction", "0.2",
                                           "--out", t / "o"], "--eval-every"),
    "train --eval-fraction 1.5 --eval-data": (lambda w, t: [*TRAIN(w), "--steps", "1", "--eval-fraction", "1.5",
                                                            "--eval-data", w.eval, "--out", t / "o"], "--eval-fraction"),
    "train --save-every 0": (lambda w, t: [*TRAIN(w), "--steps", "1", "--save-every", "0", "--out", t / "o"], "--save-every"),
    "train --batch-size 0": (lambda w, t: [*TRAIN(w), "--steps", "1", "--batch-size", "0", "--out", t / "o"], "--batch-size"),
    "train --dropout 1.5": (lambda w, t: [*TRAIN(w), "--steps", "1", "--dropout", "1.5", "--out", t / "o"], "--dropout"),
    "train --lr nan": (lambda w, t: [*TRAIN(w), "--steps", "1", "--lr", "nan", "--out", t / "o"], "--lr"),
    "train --warmup-ratio 1": (lambda w, t: [*TRAIN(w), "--steps", "1", "--warmup-ratio", "1", "--out", t / "o"], "--warmup-ratio"),
    "train --weight-decay -1": (lambda w, t: [*TRAIN(w), "--steps", "1", "--weight-decay", "-1", "--out", t / "o"], "--weight-decay"),
    "train --max-grad-norm -1": (lambda w, t: [*TRAIN(w), "--steps", "1", "--max-grad-norm", "-1", "--out", t / "o"], "--max-grad-norm"),
    "train --grad-accum 0": (lambda w, t: [*TRAIN(w), "--steps", "1", "--grad-accum", "0", "--out", t / "o"], "--grad-accum"),
    "train --max-len 0": (lambda w, t: [*TRAIN(w), "--steps", "1", "--max-len", "0", "--out", t / "o"], "--max-len"),
    "train empty texts": (lambda w, t: ["train", "--model", w.model, "--data", write_jsonl(t / "empty.jsonl",
                                        [{"text": ""}, {"text": "  "}]), "--rank", "2", "--alpha", "4", "--steps", "1",
                                        "--out", t / "o"], "empty text"),
    "train empty completions": (lambda w, t: ["train", "--model", w.model, "--data", write_jsonl(t / "empty.jsonl",
                                              [{"prompt": "the cat", "completion": ""}]), "--rank", "2", "--alpha", "4",
                                              "--steps", "1", "--out", t / "o"], "empty text"),
    "train truncated model.safetensors": (lambda w, t: ["train", "--model", _truncated_model(w, t), "--data", w.data,
                                                        "--rank", "2", "--alpha", "4", "--steps", "1", "--out", t / "o"],
                                          "truncated or corrupt"),
    "merge truncated model.safetensors": (lambda w, t: ["merge", w.adapter, "--model", _truncated_model(w, t),
                                                        "--out", t / "o"], "truncated or corrupt"),
    "sweep --steps 0": (lambda w, t: [*SWEEP(w), "--steps", "0", "--out", t / "o"], "--steps"),
    "sweep --batch-size 0": (lambda w, t: [*SWEEP(w), "--steps", "1", "--batch-size", "0", "--out", t / "o"], "--batch-size"),
    "sweep --dropout 1.5": (lambda w, t: [*SWEEP(w), "--steps", "1", "--dropout", "1.5", "--out", t / "o"], "--dropout"),
    "sweep --eval-every 0": (lambda w, t: [*SWEEP(w), "--steps", "1", "--eval-every", "0", "--out", t / "o"], "--eval-every"),
    "sweep --eval-fraction 1.5": (lambda w, t: [*SWEEP(w), "--steps", "1", "--eval-fraction", "1.5", "--out", t / "o"], "fraction"),
    "sweep --pack-size 0": (lambda w, t: [*SWEEP(w), "--steps", "1", "--pack-size", "0", "--out", t / "o"], "pack_size"),
    "sweep --gpu-memory -1": (lambda w, t: [*SWEEP(w), "--steps", "1", "--gpu-memory", "-1", "--out", t / "o"], "gpu_memory"),
    "sweep --checkpoint-every 0": (lambda w, t: [*SWEEP(w), "--steps", "1", "--checkpoint-every", "0", "--out", t / "o"],
                                   "--checkpoint-every"),
    "sweep --epochs 0": (lambda w, t: [*SWEEP(w), "--epochs", "0", "--out", t / "o"], "--epochs"),
    "sweep --max-len 0": (lambda w, t: [*SWEEP(w), "--steps", "1", "--max-len", "0", "--out", t / "o"], "--max-len"),
    "sweep --grad-accum 0": (lambda w, t: [*SWEEP(w), "--steps", "1", "--grad-accum", "0", "--out", t / "o"], "--grad-accum"),
    "sweep empty texts": (lambda w, t: ["sweep", "--model", w.model, "--data", write_jsonl(t / "empty.jsonl", [{"text": ""}]),
                                        "--ranks", "2", "--steps", "1", "--out", t / "o"], "empty text"),
    "alpha-sweep --max-len 0": (lambda w, t: [*EVAL(w), "--max-len", "0"], "--max-len"),
    "alpha-sweep --batch-size 0": (lambda w, t: [*EVAL(w), "--batch-size", "0"], "--batch-size"),
    "alpha-sweep --max-examples 0": (lambda w, t: [*EVAL(w), "--max-examples", "0"], "--max-examples"),
    "alpha-sweep --scales inf": (lambda w, t: [*EVAL(w), "--scales", "0,inf"], "--scales"),
    "analyze --energy 1.5": (lambda w, t: ["analyze", w.adapter, "--energy", "1.5"], "--energy"),
    "analyze --coverage 0": (lambda w, t: ["analyze", w.adapter, "--coverage", "0"], "--coverage"),
    "analyze --retain 2": (lambda w, t: ["analyze", w.adapter, "--retain", "2", "--model", w.model, "--data", w.eval], "--retain"),
    "analyze --budget -5": (lambda w, t: ["analyze", w.adapter, "--budget", "-5"], "budget"),
    "resize --rank 0": (lambda w, t: ["resize", w.adapter, "--rank", "0", "--out", t / "o"], "--rank"),
    "resize --energy 0": (lambda w, t: ["resize", w.adapter, "--energy", "0", "--out", t / "o"], "--energy"),
    "resize --budget -1": (lambda w, t: ["resize", w.adapter, "--budget", "-1", "--out", t / "o"], "--budget"),
    "rescale --scale inf": (lambda w, t: ["rescale", w.adapter, "--scale", "inf", "--out", t / "o"], "--scale"),
    "rescale --alpha -1": (lambda w, t: ["rescale", w.adapter, "--alpha", "-1", "--out", t / "o"], "--alpha"),
    "plan --rank 0": (lambda w, t: ["plan", "--model", "llama-2-7b", "--rank", "0"], "rank"),
    "plan --seq-len 0": (lambda w, t: ["plan", "--model", "llama-2-7b", "--rank", "8", "--seq-len", "0"], "seq"),
    "plan --batch-size 0": (lambda w, t: ["plan", "--model", "llama-2-7b", "--rank", "8", "--batch-size", "0"], "batch"),
    "recommend --examples -1": (lambda w, t: ["recommend", "--model", "llama-2-7b", "--task", "standard", "--examples", "-1"],
                                "--examples"),
    "recommend --gpu-memory 0": (lambda w, t: ["recommend", "--model", "llama-2-7b", "--task", "standard", "--examples", "9",
                                               "--gpu-memory", "0"], "--gpu-memory"),
    "recommend --seq-len 0": (lambda w, t: ["recommend", "--model", "llama-2-7b", "--task", "standard", "--examples", "9",
                                            "--seq-len", "0"], "--seq-len"),
    "recommend --lr-rank-exponent nan": (lambda w, t: ["recommend", "--model", "llama-2-7b", "--task", "standard",
                                                       "--examples", "9", "--lr-rank-exponent", "nan"], "--lr-rank-exponent"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_exit_2_with_a_hint_and_writes_nothing(w, cli, tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    build, needle = BAD_INPUTS[case]
    argv = build(w, tmp_path)
    before = set(tmp_path.rglob("*"))
    code, out, err = cli(*argv)
    clean_error(code, err, 2)
    assert needle in err, err
    assert not (tmp_path / "o").exists() and not (tmp_path / "d").exists()
    assert not [p for p in set(tmp_path.rglob("*")) - before if p.name.endswith((".tmp", ".json", ".yaml", ".html"))]


def test_a_malicious_pickle_is_refused_as_code_not_called_corrupt(w, tmp_path, cli):
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    d = tmp_path / "evil"
    d.mkdir()
    shutil.copy(w.adapter / "adapter_config.json", d)
    torch.save({"x": Payload()}, d / "adapter_model.bin")
    code, _, err = cli("analyze", d, "--allow-pickle")
    clean_error(code, err, 2)
    assert "refused" in err and "run code" in err and "corrupt" not in err
    assert not (tmp_path / "pwned").exists()


# --- 5. temporaries of a killed run, and one file mode -----------------------------------------------------
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_the_next_writer_removes_a_killed_runs_temporaries_and_keeps_a_live_ones(w, tmp_path):
    from loradial.adapters.surgery import resize
    from loradial.io import _host, atomic_write_json

    dead, host = _dead_pid(), _host()
    (tmp_path / f".state.json.{dead}-{host}.abc.tmp").write_text("half")
    (tmp_path / f".out.{dead}-{host}.xyz.tmp").mkdir()
    (tmp_path / f".out.{dead}-{host}.xyz.tmp" / "model.safetensors").write_bytes(b"0" * 100)
    (tmp_path / f".out.{dead}-{host}.old").mkdir()
    live = tmp_path / f".out.{os.getppid()}-{host}.live.tmp"  # a concurrent writer's (its process is alive)
    live.mkdir()
    other_host = tmp_path / f".out.{dead}-00000000.abc.tmp"  # another host's (we cannot tell if it is alive)
    other_host.mkdir()
    foreign = tmp_path / ".out.notours.tmp"
    foreign.mkdir()
    atomic_write_json(tmp_path / "state.json", {"ok": 1})
    resize(w.adapter, tmp_path / "out", rank=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["state.json", "out", live.name, other_host.name, foreign.name])


def test_a_resumed_sweep_cleans_what_kill_9_left(w, tmp_path):
    """A kill -9 between a temporary's creation and its rename leaves it; the resumed sweep removes it."""
    from loradial.io import _host
    from loradial.sweeps.api import sweep

    out = tmp_path / "s"
    env = {**os.environ, "LORADIAL_SWEEP_KILL": "commit:r0-p0", "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-m", "loradial", "sweep", "--model", str(w.model), "--data", str(w.data),
                        "--ranks", "2,4", "--steps", "2", "--batch-size", "2", "--max-len", "32", "--devices", "cpu",
                        "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == -9, r.stderr[-2000:]
    dead = _dead_pid()
    (out / f".state.json.{dead}-{_host()}.k9.tmp").write_text("{half")
    res = sweep(out=out, resume=True)
    assert res.best is not None
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".old")], list(out.rglob("*.tmp"))


def test_every_output_file_has_the_same_mode(w, cli, tmp_path):
    old = os.umask(0o022)
    try:
        assert cli("resize", w.adapter, "--rank", "2", "--out", tmp_path / "r")[0] == 0
        assert cli("merge", w.adapter, "--model", w.model, "--out", tmp_path / "m")[0] == 0
        assert cli("train", "--model", w.model, "--data", w.data, "--rank", "2", "--alpha", "4", "--steps", "2",
                   "--save-every", "1", "--batch-size", "2", "--max-len", "32", "--out", tmp_path / "t")[0] == 0
        assert cli("report", w.sweep, "--out", tmp_path / "report.html")[0] == 0
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files) and any(p.suffix == ".json" for p in files)
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {"0o644"}, modes
    dirs = {oct(p.stat().st_mode & 0o777) for p in tmp_path.rglob("*") if p.is_dir()}
    assert dirs == {"0o755"}, dirs


def test_messages_and_hints_print_verbatim_and_bad_input_always_has_a_hint(cli, monkeypatch):
    """Brackets in a message or hint are text, not console markup ('loradial[qlora]' once printed as
    'loradial'); an exit-2 error raised without a hint gets the verb's --help."""
    import loradial.adapters.surgery as surgery
    from loradial.errors import LoradialError

    def refuse(*a, **k):
        raise LoradialError("configs[2].r is [bold]wrong[/]", "pip install 'loradial[qlora]'")

    monkeypatch.setattr(surgery, "resize", refuse)
    code, _, err = cli("resize", "a", "--rank", "2", "--out", "b")
    assert code == 2 and "configs[2].r is [bold]wrong[/]" in err and "'loradial[qlora]'" in err

    def bare(*a, **k):
        raise LoradialError("no hint given")

    monkeypatch.setattr(surgery, "resize", bare)
    code, _, err = cli("resize", "a", "--rank", "2", "--out", "b")
    assert code == 2 and "hint: see `loradial resize --help`" in err
