"""pyproject extras: each installs only what the code imports; `all` (what .ci/run installs) names defined extras."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def _imported(module: str) -> bool:
    out = subprocess.run(["git", "grep", "-lE", rf"^\s*(import|from) {module}\b", "--", "src", "tests", "benchmarks"],
                         cwd=ROOT, capture_output=True, text=True)
    return bool(out.stdout.strip())


def test_extras_install_only_imported_packages_and_all_resolves():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "matplotlib" not in " ".join(extras["report"]) and not _imported("matplotlib")
    assert extras["ray"] == ["ray>=2.9"] and _imported("ray")  # sweep --ray
    assert _imported("jinja2")  # what the report extra keeps
    for ref in extras["all"]:
        names = re.fullmatch(r"loradial\[(.*)\]", ref).group(1).split(",")
        assert set(names) <= set(extras), names
