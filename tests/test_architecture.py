"""The architecture, enforced: the import-linter contracts of pyproject.toml (layers point down, the
math imports no training code, no import cycles between modules), the folder rules, and settings
declared once."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "loradial"


def test_import_contracts_hold():
    pytest.importorskip("importlinter")
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True) == 0, "see the contract report above"


def test_every_subpackage_says_what_it_owns_and_may_import():
    for init in SRC.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert doc and ("May import" in doc or "nothing imports it" in doc.lower()), init


def test_no_sweep_modules_at_the_top_and_no_module_shadows_a_verb():
    import loradial

    assert not list(SRC.glob("sweep_*.py"))
    names = {p.stem for p in SRC.glob("*.py")} | {p.name for p in SRC.iterdir() if (p / "__init__.py").exists()}
    verbs = {n for n, mod in loradial._API.items() if n[0].islower()}
    assert not names & verbs, names & verbs
    for verb in verbs:
        assert callable(getattr(loradial, verb))


def _literal_defaults(node: ast.AST) -> dict[str, object]:
    """name -> literal default of every keyword parameter and dataclass field in a module."""
    out: dict[str, object] = {}
    for fn in ast.walk(node):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = fn.args
            pos = args.args[len(args.args) - len(args.defaults):]
            for a, d in [*zip(pos, args.defaults), *zip(args.kwonlyargs, args.kw_defaults)]:
                if isinstance(d, ast.Constant) and d.value is not None:
                    out.setdefault(a.arg, d.value)
        if isinstance(fn, ast.AnnAssign) and isinstance(fn.target, ast.Name) and isinstance(fn.value, ast.Constant):
            out.setdefault(fn.target.id, fn.value.value)
    return out


#: Training settings whose default must come from TrainSettings wherever a training entry point names it.
TRAINING = ("lr", "schedule", "warmup_ratio", "weight_decay", "max_grad_norm", "grad_accum", "batch_size",
            "max_len", "gradient_checkpointing", "dtype", "load_in_4bit", "packing", "dropout")
#: Modules that train (or configure training); evaluation and plan have their own batch/len/dtype meanings.
TRAINING_MODULES = ("engine/train.py", "engine/session.py", "engine/config.py", "sweeps/api.py", "sweeps/setup.py",
                    "flows/tune.py")


def test_each_training_default_has_one_definition():
    """No training entry point writes a literal default for a training setting: it reads TrainSettings'."""
    for rel in TRAINING_MODULES:
        path = SRC / rel
        if not path.exists():
            continue
        literal = {k: v for k, v in _literal_defaults(ast.parse(path.read_text())).items() if k in TRAINING}
        assert not literal, f"{rel} writes its own default for {sorted(literal)}: use loradial.settings.DEFAULT"
    cli = "\n".join(p.read_text() for p in (SRC / "cli").glob("cmd_*.py") if p.stem in ("cmd_train", "cmd_sweep", "cmd_tune"))
    for flag in ("--lr", "--batch-size", "--max-len", "--dropout", "--grad-accum", "--warmup-ratio", "--schedule"):
        assert not re.search(rf'typer\.Option\(\s*(?!None\b)[^,)]+,\s*"{flag}"', cli), f"{flag} declared with a literal default"
