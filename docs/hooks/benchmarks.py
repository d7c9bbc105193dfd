"""MkDocs hook: render ``benchmarks/results/*.json`` as tables on the benchmarks page.

Configured in ``mkdocs.yml`` under ``hooks:``. A page containing the line
``<!-- benchmarks-tables -->`` gets that line replaced by one section per JSON file: the
environment the numbers were measured in (torch version, threads, platform) and a table with
one row per case (case, ours, reference, ratio, goal, pass). Extra fields of a row (notes,
memory, error bounds, ...) are listed under its table. Times get a readable unit; a memory row
gives its sizes in gigabytes (``ours_gb``, ``reference_gb``).

The result files do not all share one schema: rows live under ``"rows"`` or ``"results"``,
times are in seconds (``ours_s``) or milliseconds (``ours_ms``), sizes in gigabytes
(``ours_gb``), a goal is a text such as
``">= 2"`` or a number (meaning ``ratio >= goal``) or null, and ``pass`` may be null. Anything
unknown is shown as it is rather than dropped. Only the standard library is used (the docs
build installs nothing but the MkDocs tools).
"""

from __future__ import annotations

import html
import json
import logging
import math
from pathlib import Path
from typing import Any

MARKER = "<!-- benchmarks-tables -->"
RESULTS_DIR = Path("benchmarks") / "results"

log = logging.getLogger("mkdocs.hooks.benchmarks")

# Fields shown in the table or the heading; every other field of a row is listed as a detail.
_ROW_FIELDS = {
    "case",
    "ours_s",
    "reference_s",
    "ours_ms",
    "reference_ms",
    "ours_gb",
    "reference_gb",
    "ratio",
    "ratio_meaning",
    "goal",
    "pass",
    "reference",
}
_ENV_FIELDS = ("torch", "threads", "platform", "processor", "python", "statistic", "repeats")


def _text(value: Any) -> str:
    """Escape a value for a Markdown table cell (HTML entities, no pipes or newlines)."""
    return html.escape(str(value)).replace("|", "&#124;").replace("\n", " ")


def format_ratio(value: Any) -> str:
    """Ratio cell: two decimals for a finite number, the value as text otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "–" if value is None else _text(value)
    return f"{value:.2f}" if math.isfinite(value) else str(value)


def format_seconds(seconds: Any) -> str:
    """A duration with a readable unit (µs, ms, s), three significant digits."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return "–" if seconds is None else _text(seconds)
    if not math.isfinite(seconds):
        return str(seconds)
    magnitude = abs(seconds)
    if magnitude >= 1 or magnitude == 0:
        return f"{seconds:.3g} s"
    if magnitude >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def _time(row: dict[str, Any], who: str) -> str:
    """The ``ours``/``reference`` amount of a row, with its unit.

    A time from ``{who}_s`` or ``{who}_ms``, or a memory size from ``{who}_gb``.
    """
    gb = row.get(f"{who}_gb")
    if isinstance(gb, (int, float)) and not isinstance(gb, bool):
        return f"{gb:.3g} GB"
    if f"{who}_s" in row:
        return format_seconds(row[f"{who}_s"])
    ms = row.get(f"{who}_ms")
    if isinstance(ms, (int, float)) and not isinstance(ms, bool):
        return format_seconds(ms / 1e3)
    return "–" if ms is None else _text(ms)


def format_goal(goal: Any) -> str:
    """Goal cell: a number means ``ratio >= goal``; text is shown as written."""
    if goal is None:
        return "–"
    if isinstance(goal, (int, float)) and not isinstance(goal, bool):
        return f"ratio &ge; {goal:g}"
    return _text(goal)


def format_pass(passed: Any) -> str:
    """Pass cell: yes / **no** / – (no goal)."""
    if passed is True:
        return "yes"
    if passed is False:
        return "**no**"
    return "–" if passed is None else _text(passed)


def _detail(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return _text(json.dumps(value, sort_keys=True))
    return _text(value)


def _rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    for key in ("rows", "results", "cases"):
        rows = data.get(key)
        if isinstance(rows, list):
            return [r if isinstance(r, dict) else {"case": r} for r in rows]
    return []


def render_result(data: Any, name: str) -> str:
    """Markdown section for one parsed result file.

    Args:
        data: the parsed JSON (an object with a list of rows under ``rows`` or ``results``).
        name: the section title (the file name without ``.json``).

    Returns:
        A ``## name`` heading, the environment line, the table and the row details.
    """
    lines = [f"## {name}", ""]
    if not isinstance(data, dict):
        return "\n".join([*lines, f"!!! warning\n    `{name}.json` is not a JSON object.", ""])
    env = [
        f"{key} **{_text(data[key])}**"
        for key in _ENV_FIELDS
        if key in data and data[key] is not None
    ]
    if env:
        lines += ["Measured with " + " · ".join(env) + ".", ""]
    rows = _rows(data)
    if not rows:
        return "\n".join([*lines, "No rows in this file.", ""])
    lines += [
        "| case | ours | reference | ratio | goal | pass |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    details: list[str] = []
    for row in rows:
        case = _text(row.get("case", "?"))
        cell = case
        if row.get("ratio_meaning"):
            cell += f"<br><small>ratio = {_text(row['ratio_meaning'])}</small>"
        if row.get("reference"):
            cell += f"<br><small>reference: {_text(row['reference'])}</small>"
        lines.append(
            f"| {cell} | {_time(row, 'ours')} | {_time(row, 'reference')} | "
            f"{format_ratio(row.get('ratio'))} | {format_goal(row.get('goal'))} | "
            f"{format_pass(row.get('pass'))} |"
        )
        extra = [f"{k} = {_detail(v)}" for k, v in row.items() if k not in _ROW_FIELDS]
        if extra:
            details.append(f"- *{case}*: " + "; ".join(extra))
    lines.append("")
    if details:
        lines += ["Details:", "", *details, ""]
    return "\n".join(lines)


def render_file(path: Path) -> str:
    """Markdown section for one result file; a file that cannot be read becomes a warning box."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        log.warning("benchmarks hook: cannot read %s: %s", path, err)
        return f"## {path.stem}\n\n!!! warning\n    `{path.name}` could not be read: {_text(err)}\n"
    return render_result(data, path.stem)


def render_benchmarks(results_dir: Path) -> str:
    """Markdown of every ``*.json`` file of ``results_dir``, in file-name order."""
    files = sorted(results_dir.glob("*.json"))
    if not files:
        return f"No result files in `{RESULTS_DIR.as_posix()}/` yet: run `nox -s bench`.\n"
    return "\n".join(render_file(p) for p in files)


def _results_dir(config: Any) -> Path:
    return Path(config["config_file_path"]).resolve().parent / RESULTS_DIR


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the marker line with the rendered tables (MkDocs event)."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render_benchmarks(_results_dir(config)))


def on_serve(server: Any, config: Any, builder: Any) -> Any:
    """Rebuild on changes of the result files under ``mkdocs serve`` (MkDocs event)."""
    results = _results_dir(config)
    if results.is_dir():
        server.watch(str(results))
    return server
