"""Check that a built site renders: home page with its title, navigation and every nav page.

Run after ``mkdocs build --site-dir site``: ``python docs/hooks/check_site.py site``. Standard
library only (the docs session installs only the mkdocs tools). Exits non-zero with the reason.
"""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: set[str] = set()
        self.title = ""
        self._in_title = False
        self.h1 = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.links.add(href)
        self._in_title = tag == "title"
        self.h1 += tag == "h1"

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False


REQUIRED = ("quickstart/", "compose/", "algorithm/", "anomaly/", "recipes/", "benchmarks/", "demo/")


def check(site: Path) -> list[str]:
    """Problems found in ``site`` (empty when the home page renders)."""
    index = site / "index.html"
    if not index.is_file():
        return [f"{index} does not exist"]
    page = _Page()
    page.feed(index.read_text(encoding="utf-8"))
    problems = []
    if "gmmseg" not in page.title:
        problems.append(f"home page title {page.title!r} does not name gmmseg")
    if page.h1 < 1:
        problems.append("home page has no <h1>")
    for target in REQUIRED:
        if not any(link.rstrip("/").endswith(target.rstrip("/")) for link in page.links):
            problems.append(f"home page has no navigation link to {target}")
        elif not (site / target / "index.html").is_file():
            problems.append(f"{site / target / 'index.html'} was not built")
    return problems


if __name__ == "__main__":
    found = check(Path(sys.argv[1] if len(sys.argv) > 1 else "site"))
    for p in found:
        print(f"check_site: {p}", file=sys.stderr)
    if not found:
        print("check_site: home page renders with navigation to every section")
    raise SystemExit(1 if found else 0)
