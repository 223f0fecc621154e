"""Shared writer for reports/benchmarks.json (one key per benchmark) and reports/benchmarks.md (one section each)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from nmt.io import write_json_atomic, write_text_atomic


def replace_section(markdown: str, section: str) -> str:
    """Return ``markdown`` with the section that has ``section``'s ``## `` title replaced, or appended."""
    title = section.splitlines()[0]
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(markdown):
        return pattern.sub(lambda _: section.rstrip("\n") + "\n\n", markdown, count=1)
    if not markdown.strip():
        return "# Benchmarks\n\n" + section.rstrip("\n") + "\n"
    return markdown.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"


def update_reports(reports_dir: str | Path, entries: dict, section: str) -> None:
    """Merge ``entries`` into benchmarks.json and put ``section`` (starting with a ``## `` title) into benchmarks.md."""
    reports = Path(reports_dir)
    json_path = reports / "benchmarks.json"
    existing = json.loads(json_path.read_text(encoding="utf-8")) if json_path.is_file() else {}
    existing.update(entries)
    write_json_atomic(json_path, existing)

    markdown_path = reports / "benchmarks.md"
    markdown = markdown_path.read_text(encoding="utf-8") if markdown_path.is_file() else ""
    write_text_atomic(markdown_path, replace_section(markdown, section))
