"""The ``loradial`` command tree. Each verb lives in ``cli/cmd_<verb>.py`` and registers itself on
``app``; this package imports every such module, so adding a verb never edits a shared file.

The top layer: parse → call one API function → render. It holds no logic; nothing imports it.
"""

from __future__ import annotations

import importlib
import pkgutil

from loradial.cli.common import app


def _load_commands() -> None:
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name.startswith("cmd_"):
            importlib.import_module(f"{__name__}.{mod.name}")


_load_commands()


def main() -> None:
    app()
