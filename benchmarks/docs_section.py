"""Replacing one marked section of ``docs/benchmarks.md`` while keeping every other section."""

from __future__ import annotations

import re
from pathlib import Path


def replace_section(doc: Path, start: str, end: str, body: str) -> None:
    """Replace the text between ``start`` and ``end`` in ``doc`` (appended when absent; file created with ``# Benchmarks``)."""
    text = doc.read_text() if doc.is_file() else "# Benchmarks\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _m: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
