"""The README and docs/ as a new user meets them: every example is checked against the real CLI.

- `scripts/readme_examples.sh` holds the README's "Verbs" examples, one `loradial ...` line per
  verb, chained on the bundled demo model and data; README.md must show each line verbatim.
- `scripts/docs_examples.sh` holds the examples of docs/*.md that run offline (bundled configs,
  the demo model); it runs after the README script in the same directory and reuses its outputs.
  Each of its lines must appear verbatim in docs/*.md.
- Every other `loradial ...` line in a bash/sh/console block of README.md or docs/*.md is parsed
  by the command tree itself (click's `make_context`): unknown options, bad values and missing
  arguments fail. Such lines may not hide in a block of another language.
- docs/architecture.md's walk names modules and functions; each must exist. Relative links resolve.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "readme_examples.sh"
DOCS_SCRIPT = REPO / "scripts" / "docs_examples.sh"
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
SHELL_LANGS = {"bash", "sh", "shell", "console"}
SHELL_OPERATORS = {">", ">>", "<", "|", "||", "&&", ";", "&", "2>", "2>&1"}


def _script_commands(script: Path = SCRIPT) -> list[str]:
    return [ln.strip() for ln in script.read_text(encoding="utf-8").splitlines() if ln.startswith("loradial ")]


def _verbs() -> list[str]:
    from loradial.cli import app

    return sorted(c.name for c in app.registered_commands)


def _blocks(path: Path) -> list[tuple[str, int, list[str]]]:
    """Fenced code blocks of a markdown file: (language, line number of the fence, lines)."""
    blocks, lang, start, body = [], None, 0, []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = re.match(r"^\s*```(\S*)", line)
        if fence and lang is None:
            lang, start, body = fence.group(1).lower(), i, []
        elif fence:
            blocks.append((lang, start, body))
            lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def _commands_in(lines: list[str]) -> list[str]:
    """`loradial ...` lines of a shell block, continuations joined, a console prompt `$ ` dropped."""
    out, pending = [], ""
    for raw in lines:
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        line = line.removeprefix("$ ")
        if line.startswith("loradial ") or line == "loradial":
            out.append(line)
    return out


def _doc_commands(paths=(README, *DOCS)) -> list[tuple[str, str]]:
    """(where, command) for every `loradial` line of a shell block in README.md and docs/*.md."""
    found = []
    for path in paths:
        for lang, start, body in _blocks(path):
            if lang in SHELL_LANGS:
                found += [(f"{path.relative_to(REPO)}:{start}", c) for c in _commands_in(body)]
    return found


def _argv(command: str) -> list[str]:
    """The arguments `loradial` receives: shell words up to the first redirection, pipe or comment."""
    lex = shlex.shlex(command, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    words = []
    for word in lex:
        if word in SHELL_OPERATORS or word.startswith((">", "|", "&", ";", "<")):
            break
        words.append(word)
    assert words and words[0] == "loradial", command
    return words[1:]


def _parse_error(argv: list[str]) -> str | None:
    """None when the real command tree accepts ``argv`` (nothing runs), else click's message."""
    from typer.main import get_command

    from loradial.cli import app

    group = get_command(app)
    if not argv or argv[0].startswith("-"):
        return None if argv in ([], ["--version"], ["--help"]) else f"unexpected global options {argv}"
    cmd = group.commands.get(argv[0])
    if cmd is None:
        return f"no verb {argv[0]!r} (verbs: {', '.join(sorted(group.commands))})"
    if "--help" in argv[1:]:
        return None
    try:
        with cmd.make_context(f"loradial {argv[0]}", list(argv[1:])):
            pass
    except Exception as e:  # click's usage errors (typer may vendor its own click): all have format_message
        if not hasattr(e, "format_message"):
            raise
        return f"{type(e).__name__}: {e.format_message()}"
    return None


# --- the README's verb examples ------------------------------------------------------------------

def test_every_verb_help_has_an_example(cli):
    verbs = _verbs()
    assert {"plan", "sweep", "demo", "report"} <= set(verbs)
    for verb in verbs:
        code, out, _ = cli(verb, "--help")
        assert code == 0, verb
        assert "Example:" in out, f"`loradial {verb} --help` has no 'Example:' line"


def test_script_covers_every_verb_once_and_demo_first():
    cmds = _script_commands()
    verbs_in_script = [c.split()[1] for c in cmds]
    assert sorted(verbs_in_script) == _verbs()
    assert verbs_in_script[0] == "demo"


def test_readme_shows_every_script_command_verbatim():
    readme = README.read_text(encoding="utf-8")
    missing = [c for c in _script_commands() if c not in readme]
    assert not missing, "README.md lacks these lines of scripts/readme_examples.sh:\n" + "\n".join(missing)


def test_readme_is_short_and_links_every_docs_page():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300, "README.md is over 300 lines: move the depth to docs/"
    unlinked = [p.name for p in DOCS if f"docs/{p.name}" not in text]
    assert DOCS and not unlinked, f"README.md links no docs page {unlinked}"


# --- the docs' examples --------------------------------------------------------------------------

def test_docs_script_lines_are_in_the_docs_verbatim():
    shown = {c for where, c in _doc_commands(DOCS)}
    cmds = _script_commands(DOCS_SCRIPT)
    assert cmds, "scripts/docs_examples.sh runs nothing"
    missing = [c for c in cmds if not any(c == s or s.startswith(c + " ") for s in shown)]
    assert not missing, "docs/*.md lacks these lines of scripts/docs_examples.sh:\n" + "\n".join(missing)


def test_every_documented_command_parses():
    commands = _doc_commands()
    assert len(commands) > 40, "the command scan found too little: is the fence syntax still ```bash?"
    assert {c.split()[1] for _, c in commands} >= set(_verbs()), "some verb has no example in the docs"
    bad = [f"{where}: {c}\n    -> {err}" for where, c in commands if (err := _parse_error(_argv(c)))]
    assert not bad, "these documented commands do not parse:\n" + "\n".join(bad)


def test_the_parse_check_catches_bad_examples():
    assert _parse_error(_argv("loradial plan --model llama-2-7b --rank 8")) is None
    assert _parse_error(_argv("loradial analyze ./a --json > out.json  # comment")) is None
    assert "--no-such" in _parse_error(_argv("loradial plan --no-such 1"))
    assert _parse_error(_argv("loradial train --rank x --out r"))  # not an int
    assert _parse_error(_argv("loradial report"))  # missing DIRECTORY
    assert _parse_error(_argv("loradial plann --rank 8"))  # no such verb


def test_no_command_hides_outside_a_shell_block():
    hidden = [f"{path.relative_to(REPO)}:{start} (```{lang})"
              for path in (README, *DOCS) for lang, start, body in _blocks(path)
              if lang not in SHELL_LANGS and _commands_in(body)]
    assert not hidden, "`loradial` commands in blocks that are not bash/sh/console (unchecked):\n" + "\n".join(hidden)


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_relative_links_resolve():
    broken = []
    for path in (README, *DOCS):
        text = path.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                broken.append(f"{path.name}: {target}")
            elif anchor and dest.suffix == ".md":
                heads = re.findall(r"^#+\s+(.*)$", dest.read_text(encoding="utf-8"), flags=re.M)
                if anchor not in {_slug(h) for h in heads}:
                    broken.append(f"{path.name}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_architecture_walk_names_real_functions():
    """Each row `| `path.py` | `f`, `Class.method` | ... |` of docs/architecture.md: the file defines them."""
    rows = re.findall(r"^\| `([\w/]+\.py)` \| ([^|]+) \|", (REPO / "docs" / "architecture.md").read_text(encoding="utf-8"),
                      flags=re.M)
    assert len(rows) >= 20, "the walk tables of docs/architecture.md were not found"
    missing = []
    for rel, names in rows:
        src = REPO / "src" / "loradial" / rel
        if not src.exists():
            missing.append(f"{rel} (no such file)")
            continue
        code = src.read_text(encoding="utf-8")
        for name in re.findall(r"`([\w.]+)`", names):
            for part in name.split("."):
                if not re.search(rf"^\s*(?:async\s+)?(?:def|class)\s+{re.escape(part)}\b", code, flags=re.M):
                    missing.append(f"{rel}: {name}")
                    break
    assert not missing, "docs/architecture.md names what the code does not define:\n" + "\n".join(missing)


# --- running them ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_readme_and_docs_examples_run(tmp_path):
    env = dict(os.environ, WORKDIR=str(tmp_path / "work"), PYTHON=sys.executable, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
    for script, done in ((SCRIPT, "README examples: all commands exited 0"),
                         (DOCS_SCRIPT, "docs examples: all commands exited 0")):
        proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
        failed = re.findall(r"^FAILED: .*$", proc.stderr, flags=re.M)
        assert proc.returncode == 0 and not failed, (script.name, failed or proc.stderr[-3000:])
        assert done in proc.stderr
    work = tmp_path / "work" / "runs"
    for rel in ("demo/report.html", "recommended.json", "r8/adapters/default/adapter_model.safetensors",
                "sweep/results.json", "r8-rank4", "r8-half", "r8-merged/model.safetensors", "axolotl.yaml",
                "sweep-report.html",
                # docs/*.md
                "lora.yaml", "torchtune.yaml", "r8-analysis.json", "r8-e95/adapter_config.json",
                "r8-100k/adapter_config.json", "r8-full.json", "r8-extracted/adapter_config.json", "r8-rs/adapter_config.json", "r8-half-b/adapter_config.json",
                "demo-report.html"):
        assert (work / rel).exists(), rel
    import json

    analysis = json.loads((work / "r8-analysis.json").read_text())
    assert [p["k"] for p in analysis["truncation_curve"]][:1] == [0] and analysis["scale_curve"]
