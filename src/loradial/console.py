"""The one stderr console: human output and progress bars, never stdout (which carries ``--json``).

Owns: the console object every layer prints through. Imports: rich only.
"""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console, ConsoleDimensions
from rich.measure import Measurement
from rich.table import Table

#: Width of human output when stderr is not a terminal (nohup, SLURM logs, CI) and $COLUMNS is unset.
LOG_WIDTH = 200


def log_width() -> int:
    """$COLUMNS if set to a number, else ``LOG_WIDTH``: Rich's fallback of 80 truncates table cells."""
    cols = os.environ.get("COLUMNS", "")
    return int(cols) if cols.isdigit() and int(cols) > 0 else LOG_WIDTH


class _Console(Console):
    """A rich Console that, when its stream is not a terminal, is ``log_width()`` wide and widens
    to fit any table it prints, so no cell is ever cut to '…'. On a terminal it is rich's own."""

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)
        if self._width is None and not self.is_terminal:
            return ConsoleDimensions(log_width(), size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)

    def print(self, *objects: Any, **kwargs: Any) -> None:
        if kwargs.get("width") is None and not self.is_terminal:
            tables = [o for o in objects if isinstance(o, Table)]
            if tables:
                wide = self.options.update_width(10**5)
                need = max(Measurement.get(self, wide, t).maximum for t in tables)
                if need > self.width:  # print(width=) can only narrow: widen the console for this call
                    old, self._width = self._width, need
                    try:
                        return super().print(*objects, **kwargs)
                    finally:
                        self._width = old
        super().print(*objects, **kwargs)


#: Human-readable output (tables, summaries, progress) goes here.
console = _Console(stderr=True, highlight=False)
