"""The offline task generators for validating tune (issue 13 item 5, scripts/tune_tasks/): a few
records each, loaded with loradial.data.load_dataset and the bundled demo tokenizer (no downloads):
the format is the one loradial reads, the loss falls on the answer only, the sequences fit the
demo model's context, train and eval never share a question, and a rerun writes the same bytes."""

from __future__ import annotations

import importlib.util
import json
import sysconfig
from pathlib import Path

import pytest

from loradial.data import IGNORE_INDEX, load_dataset, load_records, record_format

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts" / "tune_tasks"
DEMO_MODEL = ROOT / "src" / "loradial" / "assets" / "demo-model"


def _script(name):
    spec = importlib.util.spec_from_file_location(f"tune_tasks_{name}", SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(DEMO_MODEL)


def _answer_text(tok, ex):
    return tok.decode([i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE_INDEX])


def test_procedural_task(tmp_path, tok):
    mod = _script("build_procedural")
    out = tmp_path / "proc"
    assert mod.main(["--out", str(out), "--train-rows", "40", "--eval-rows", "12"]) == 0
    train_recs, eval_recs = load_records(out / "train.jsonl"), load_records(out / "eval.jsonl")
    assert len(train_recs) == 40 and len(eval_recs) == 12
    assert {record_format(r) for r in train_recs + eval_recs} == {"prompt_completion"}
    assert not {r["prompt"] for r in train_recs} & {r["prompt"] for r in eval_recs}
    for r in train_recs + eval_recs:  # exact answers
        q = r["prompt"][len("Q: "):-len("\nA:")]
        if q.startswith("reverse "):
            assert r["completion"] == " " + q[len("reverse '"):-1][::-1]
        else:
            a, b = q.removesuffix(" = ?").split(" + ")
            assert r["completion"] == f" {int(a) + int(b)}"
    assert {"add", "reverse"} == {"reverse" if "reverse" in r["prompt"] else "add" for r in train_recs}
    train, ev = load_dataset(out / "train.jsonl", tok, 256, eval_data=out / "eval.jsonl")
    assert len(train) == 40 and len(ev) == 12
    for ex, rec in zip(train, train_recs):
        assert len(ex["input_ids"]) <= 64
        assert _answer_text(tok, ex).strip().startswith(rec["completion"].strip())  # loss on the answer only
    build = json.loads((out / "build.json").read_text())
    assert build["rows"] == {"train": 40, "eval": 12}
    again = tmp_path / "again"
    mod.main(["--out", str(again), "--train-rows", "40", "--eval-rows", "12"])
    assert (again / "train.jsonl").read_bytes() == (out / "train.jsonl").read_bytes()
    assert mod.main(["--out", str(tmp_path / "x"), "--kinds", "multiply"]) == 2


def test_instruct_task(tmp_path, tok):
    mod = _script("build_instruct")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out = tmp_path / "instruct"
    args = ["--out", str(out), "--modules", "textwrap,json.decoder,string,shlex,fnmatch,glob",
            "--eval-percent", "40", "--train-rows", "30", "--eval-rows", "10"]
    assert mod.main(args) == 0
    train_recs, eval_recs = load_records(out / "train.jsonl"), load_records(out / "eval.jsonl")
    assert train_recs and eval_recs and len(train_recs) <= 30 and len(eval_recs) <= 10
    assert {record_format(r) for r in train_recs + eval_recs} == {"messages"}
    for r in train_recs + eval_recs:
        user, assistant = r["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert user["content"].endswith(("?", "sentence.")) and 25 <= len(assistant["content"]) <= 220
    # split by module: no module is asked about in both
    def mods(recs):
        return {m for r in recs for m in ("textwrap", "json", "string", "shlex", "fnmatch", "glob")
                if f"`{m}" in r["messages"][0]["content"]}
    assert not mods(train_recs) & mods(eval_recs)
    # the answer is the docstring's first sentence, as inspect.getdoc gives it
    import inspect
    import textwrap

    rec = next((r for r in train_recs + eval_recs if "`dedent`" in r["messages"][0]["content"]
                or "textwrap.dedent" in r["messages"][0]["content"]), None)
    if rec is not None:
        assert rec["messages"][1]["content"] == mod.first_sentence(inspect.getdoc(textwrap.dedent))
    train, ev = load_dataset(out / "train.jsonl", tok, 256, eval_data=out / "eval.jsonl")
    assert len(train) == len(train_recs) and len(ev) == len(eval_recs)
    for ex, rec in zip(train, train_recs):
        assert len(ex["input_ids"]) <= 200
        answer = _answer_text(tok, ex)
        assert answer.startswith(rec["messages"][1]["content"][:20])  # loss on the assistant turn only
        assert "user" not in answer
    build = json.loads((out / "build.json").read_text())
    assert build["stdlib"] == str(stdlib) and build["rows"]["train"] == len(train_recs)
    again = tmp_path / "again"
    mod.main([*args[:1], str(again), *args[2:]])
    assert (again / "train.jsonl").read_bytes() == (out / "train.jsonl").read_bytes()


def test_first_sentence():
    mod = _script("build_instruct")
    assert mod.first_sentence("Return x.  Then more.\n\nDetails.") == "Return x."
    assert mod.first_sentence("Split the string\nat spaces. E.g. this.") == "Split the string at spaces."
    assert mod.first_sentence("Version 3.11 of the thing") == "Version 3.11 of the thing"
