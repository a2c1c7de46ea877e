"""Write docs/adapter-features.md from loradial.adapters.features (the single source of the table).

    python scripts/gen_adapter_features.py          # rewrite the page
    python scripts/gen_adapter_features.py --check  # exit 1 if the committed page is stale
"""

from __future__ import annotations

import sys
from pathlib import Path

from loradial.adapters.features import render_markdown

PAGE = Path(__file__).resolve().parents[1] / "docs" / "adapter-features.md"


def main() -> int:
    text = render_markdown()
    if "--check" in sys.argv[1:]:
        if not PAGE.is_file() or PAGE.read_text() != text:
            print(f"{PAGE} is stale: run python scripts/gen_adapter_features.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
