"""The documentation site's build hook: benchmark tables from benchmarks/results/*.json."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.cpu_only("checks the documentation sources")


ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RESULT_FILES = sorted(RESULTS.glob("*.json"))


def _load_hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gmmseg_docs_benchmarks_hook", ROOT / "docs" / "hooks" / "benchmarks.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hook = _load_hook()


def _rows(data: dict) -> list[dict]:
    return data.get("rows", data.get("results", []))


def _table_lines(section: str) -> list[str]:
    return [line for line in section.splitlines() if line.startswith("| ")]


def test_result_files_exist():
    assert RESULT_FILES, "benchmarks/results/ holds no JSON file"


@pytest.mark.parametrize("path", RESULT_FILES, ids=lambda p: p.name)
def test_every_file_renders_a_table_with_every_ratio(path):
    data = json.loads(path.read_text())
    section = hook.render_file(path)
    assert section.startswith(f"## {path.stem}\n")
    lines = _table_lines(section)
    assert lines[0] == "| case | ours | reference | ratio | goal | pass |"
    body = lines[1:][1:]  # after the alignment row
    rows = _rows(data)
    assert rows and len(body) == len(rows)
    for row, line in zip(rows, body, strict=True):
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        assert len(cells) == 6, line
        assert cells[3] == f"{row['ratio']:.2f}"
        case = row["case"].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        assert cells[0].startswith(case)
        assert cells[5] == {True: "yes", False: "**no**", None: "–"}[row.get("pass")]


@pytest.mark.parametrize("path", RESULT_FILES, ids=lambda p: p.name)
def test_environment_is_shown(path):
    data = json.loads(path.read_text())
    section = hook.render_file(path)
    env = section.splitlines()[2]
    assert env.startswith("Measured with ")
    for key in ("torch", "threads", "platform"):
        assert f"{key} **{data[key]}**" in env


def test_times_in_seconds_and_milliseconds():
    seconds = {"case": "a", "ours_s": 0.0125, "reference_s": 2.5, "ratio": 200.0}
    millis = {"case": "b", "ours_ms": 1.5, "reference_ms": 35.0, "ratio": 23.3333, "goal": 20}
    section = hook.render_result({"torch": "2.x", "rows": [seconds, millis]}, "t")
    assert "| a | 12.5 ms | 2.5 s | 200.00 | – | – |" in section
    assert "| b | 1.5 ms | 35 ms | 23.33 | ratio &ge; 20 | – |" in section


def test_memory_rows_are_shown_in_gigabytes():
    row = {"case": "peak extra memory", "ours_gb": 0.903, "reference_gb": 2.0, "ratio": 0.45}
    section = hook.render_result({"rows": [row]}, "t")
    assert "| peak extra memory | 0.903 GB | 2 GB | 0.45 | – | – |" in section
    assert "ours_gb =" not in section, "sizes are table cells, not details"


def test_extra_fields_and_escaping():
    row = {
        "case": "x | y",
        "ours_s": 1.0,
        "reference_s": 1.0,
        "ratio": 1.0,
        "goal": "<= 1.5",
        "pass": True,
        "note": "scaled down",
        "details": {"k": 3},
    }
    section = hook.render_result({"results": [row]}, "t")
    (line,) = _table_lines(section)[2:]
    assert line.startswith("| x &#124; y |")
    assert "&lt;= 1.5" in line
    assert "note = scaled down" in section
    assert '"k": 3' in section.replace("&quot;", '"')


def test_unreadable_and_empty_files(tmp_path):
    assert "No result files" in hook.render_benchmarks(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "empty.json").write_text('{"rows": []}')
    out = hook.render_benchmarks(tmp_path)
    assert "## bad" in out and "could not be read" in out
    assert "## empty" in out and "No rows" in out


def test_on_page_markdown_replaces_the_marker():
    config = {"config_file_path": str(ROOT / "mkdocs.yml")}
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert hook.MARKER in page
    out = hook.on_page_markdown(page, None, config, None)
    assert hook.MARKER not in out
    assert len(re.findall(r"^## ", out, flags=re.M)) >= len(RESULT_FILES)
    assert hook.on_page_markdown("# other page\n", None, config, None) == "# other page\n"


def test_check_site_detects_a_broken_home_page(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "check_site", Path(__file__).resolve().parents[1] / "docs" / "hooks" / "check_site.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.check(tmp_path) == [f"{tmp_path / 'index.html'} does not exist"]
    links = "".join(f'<a href="{t}">x</a>' for t in mod.REQUIRED)
    (tmp_path / "index.html").write_text(f"<html><title>gmmseg</title><h1>g</h1>{links}</html>")
    for t in mod.REQUIRED:
        (tmp_path / t).mkdir(parents=True)
        (tmp_path / t / "index.html").write_text("<html></html>")
    assert mod.check(tmp_path) == []
    (tmp_path / "demo" / "index.html").unlink()
    (tmp_path / "index.html").write_text(f"<html><title>other</title>{links}</html>")
    problems = mod.check(tmp_path)
    assert any("title" in p for p in problems) and any("<h1>" in p for p in problems)
    assert any("demo" in p and "not built" in p for p in problems)
