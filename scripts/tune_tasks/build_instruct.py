"""Build task (b) of issue 13 item 5: an instruction task in chat format from the Python standard
library's own docstrings, offline and deterministic.

Each record is one question and its answer, as loradial's ``messages`` format (loss on the
assistant turn only, rendered with the tokenizer's chat template):

    {"messages": [{"role": "user", "content": "What does the function `dedent` in the module `textwrap` do?"},
                  {"role": "assistant", "content": "Remove any common leading whitespace from every line in `text`."}]}

Source: every public module-level function and class, and every public method of a public class,
that has a docstring, in the ``.py`` files of the running interpreter's standard library (default:
``sysconfig.get_paths()['stdlib']``; test suites, idlelib, tkinter, turtledemo, lib2to3, ensurepip,
site-packages and private modules left out). Files are *parsed* with ``ast`` - never imported, so no
module code runs - and ``ast.get_docstring`` gives the same cleaned text ``inspect.getdoc`` would.
The answer is the docstring's first sentence (of its first paragraph), whitespace normalised;
records whose answer is shorter than ``--min-chars`` or longer than ``--max-chars``, or that merely
restate a signature (``f(x) -> y``), are skipped, and a question asked twice keeps its first answer.

Split: by module (a stable hash of the module name), so the eval questions are about modules the
training data never mentions - the adapter must learn the *form* of an answer, not recall one.
Sizes: ``--max-tokens`` (default 200) drops records longer than that under the tokenizer (default:
loradial's bundled demo model, vocab 4096, context 256); ``--train-rows`` / ``--eval-rows`` cap the
output, taking records in a seeded shuffle.

Writes OUT/train.jsonl, OUT/eval.jsonl and OUT/build.json (arguments, Python version, counts,
sha256 of each file). Default OUT is out/tune_tasks/instruct (git-ignored):

    PYTHONPATH=src python scripts/tune_tasks/build_instruct.py
    PYTHONPATH=src python scripts/tune_tasks/build_instruct.py --out /tmp/instruct --train-rows 200 --eval-rows 50
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import random
import re
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO_MODEL = ROOT / "src" / "loradial" / "assets" / "demo-model"

#: path parts that are not library API (tests, GUIs, demos, vendored tools, installed packages)
SKIP_PARTS = {"test", "tests", "idle_test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip",
              "site-packages", "dist-packages", "__pycache__", "config-3.11-x86_64-linux-gnu", "pydoc_data"}
SKIP_MODULES = {"antigravity", "this", "__hello__", "__phello__", "turtle"}

QUESTIONS = {
    "function": ["What does the function `{name}` in the module `{module}` do?",
                 "In Python's `{module}` module, what is `{name}()` for?",
                 "Explain `{module}.{name}` in one sentence."],
    "class": ["What is the class `{name}` in the module `{module}`?",
              "In Python's `{module}` module, what does the class `{name}` represent?",
              "Explain `{module}.{name}` in one sentence."],
    "method": ["What does the method `{cls}.{name}` in the module `{module}` do?",
               "In Python's `{module}` module, what does `{cls}.{name}()` do?",
               "Explain `{module}.{cls}.{name}` in one sentence."],
}

_SIGNATURE = re.compile(r"^[\w.]+\(.*\)\s*(->.*)?$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(`'\"])")


def first_sentence(doc: str) -> str:
    """The first sentence of the first paragraph of a cleaned docstring, whitespace normalised."""
    para = doc.strip().split("\n\n")[0]
    text = " ".join(para.split())
    parts = _SENTENCE_END.split(text, maxsplit=1)
    return parts[0].strip()


def module_name(path: Path, root: Path) -> str | None:
    rel = path.relative_to(root)
    if any(p in SKIP_PARTS for p in rel.parts) or any(p.startswith("_") and p != "__init__.py" for p in rel.parts):
        return None
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if not parts or parts[0] in SKIP_MODULES or parts[0].startswith("test"):
        return None
    return ".".join(parts)


def docstring_items(source: str, module: str):
    """(kind, module, class or None, name, docstring) for the public documented API of one file."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            doc = ast.get_docstring(node)
            if doc:
                yield "function", module, None, node.name, doc
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            doc = ast.get_docstring(node)
            if doc:
                yield "class", module, None, node.name, doc
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and not sub.name.startswith("_"):
                    doc = ast.get_docstring(sub)
                    if doc:
                        yield "method", module, node.name, sub.name, doc


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def build_records(stdlib: Path, min_chars: int = 25, max_chars: int = 220, modules: list[str] | None = None) -> list[dict]:
    """Every (question, answer) record of the stdlib at ``stdlib``, in a fixed order, with its module."""
    seen: set[str] = set()
    out = []
    for path in sorted(stdlib.rglob("*.py")):
        module = module_name(path, stdlib)
        if module is None or (modules and module not in modules):
            continue
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for kind, mod, cls, name, doc in docstring_items(source, module):
            answer = first_sentence(doc)
            if not (min_chars <= len(answer) <= max_chars) or _SIGNATURE.match(answer) or answer.endswith(":"):
                continue
            key = f"{mod}.{cls + '.' if cls else ''}{name}"
            if key in seen:
                continue
            seen.add(key)
            templates = QUESTIONS[kind]
            question = templates[_hash(key) % len(templates)].format(module=mod, cls=cls, name=name)
            out.append({"module": mod, "messages": [{"role": "user", "content": question},
                                                    {"role": "assistant", "content": answer}]})
    return out


def split_by_module(records: list[dict], eval_percent: float) -> tuple[list[dict], list[dict]]:
    """Eval gets every record of the modules whose name hashes below eval_percent % (top-level package)."""
    train, ev = [], []
    for rec in records:
        top = rec["module"].split(".")[0]
        (ev if _hash("split:" + top) % 10_000 < eval_percent * 100 else train).append(rec)
    return train, ev


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stdlib", default=sysconfig.get_paths()["stdlib"], help="the standard library to read")
    ap.add_argument("--out", default=str(ROOT / "out" / "tune_tasks" / "instruct"))
    ap.add_argument("--modules", default=None, help="comma-separated module names to keep (default: all)")
    ap.add_argument("--tokenizer", default=str(DEMO_MODEL), help="for --max-tokens ('' to skip the length check)")
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--min-chars", type=int, default=25)
    ap.add_argument("--max-chars", type=int, default=220)
    ap.add_argument("--eval-percent", type=float, default=12.0)
    ap.add_argument("--train-rows", type=int, default=4000)
    ap.add_argument("--eval-rows", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    stdlib = Path(args.stdlib)
    if not stdlib.is_dir():
        print(f"error: no standard library at {stdlib}", file=sys.stderr)
        return 2
    modules = [m.strip() for m in args.modules.split(",")] if args.modules else None
    records = build_records(stdlib, args.min_chars, args.max_chars, modules)
    n_found = len(records)
    if args.tokenizer and args.max_tokens:
        from transformers import AutoTokenizer

        from loradial.data import tokenize_record

        tok = AutoTokenizer.from_pretrained(args.tokenizer)
        records = [r for r in records if len(tokenize_record({"messages": r["messages"]}, tok)["input_ids"]) <= args.max_tokens]
    train, ev = split_by_module(records, args.eval_percent)
    rng = random.Random(args.seed)
    rng.shuffle(train)
    rng.shuffle(ev)
    train, ev = train[: args.train_rows], ev[: args.eval_rows]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name, rows in (("train", train), ("eval", ev)):
        text = "".join(json.dumps({"messages": r["messages"]}, ensure_ascii=False) + "\n" for r in rows)
        (out / f"{name}.jsonl").write_text(text, encoding="utf-8")
        digests[name] = hashlib.sha256(text.encode()).hexdigest()
    build = {"task": "instruct (chat, loss on the assistant answer)", "python": sys.version.split()[0],
             "stdlib": str(stdlib), "records_found": n_found, "records_within_max_tokens": len(records),
             "rows": {"train": len(train), "eval": len(ev)},
             "modules": {"train": len({r["module"].split(".")[0] for r in train}),
                         "eval": len({r["module"].split(".")[0] for r in ev})},
             "args": vars(args), "sha256": digests}
    (out / "build.json").write_text(json.dumps(build, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(train)} train / {len(ev)} eval chats to {out} ({n_found} found, {len(records)} within "
          f"{args.max_tokens} tokens)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
