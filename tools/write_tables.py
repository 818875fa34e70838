"""Rewrite the generated tables in README.md and notebooks/README.md from the scenarios' declarations.

    python tools/write_tables.py

Each table sits between ``<!-- labkit list --markdown: NAME ... -->`` and ``<!-- end -->``; only
those regions change (``labkit list --markdown`` prints the same text). ``tests/test_tables.py``
fails while a file differs from what this writes.
"""

from __future__ import annotations

from pathlib import Path

from labkit.ui.tables import FILES, rewrite

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    for name in FILES:
        path = ROOT / name
        text = path.read_text()
        new = rewrite(text)
        if new != text:
            path.write_text(new)
        print(f"{name}: {'rewritten' if new != text else 'already up to date'}")


if __name__ == "__main__":
    main()
