"""Nox sessions: tests, lint, typecheck, docs, bench.

The sessions install a CPU build of PyTorch by default (``torch==2.13.0``). An unpinned ``torch``
would pull a multi-GB CUDA build; set ``GMMSEG_TORCH`` to choose another requirement, e.g.
``GMMSEG_TORCH="torch==2.5.1"`` or ``GMMSEG_TORCH=skip`` to use the torch that pip finds already
satisfied (only meaningful with ``--no-venv``).
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = False

TORCH = os.environ.get("GMMSEG_TORCH", "torch==2.13.0")
LINT_TOOLS = ["ruff==0.17.6"]
TYPE_TOOLS = ["mypy==2.4.1"]


def install_torch(session: nox.Session) -> None:
    """Install the pinned torch first so that the package's ``torch>=`` is already satisfied."""
    if TORCH != "skip":
        session.install(TORCH)


@nox.session
def tests(session: nox.Session) -> None:
    """The full CPU test suite (pass pytest arguments after ``--``)."""
    install_torch(session)
    session.install("-e", ".[test]")
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    session.install(*LINT_TOOLS)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src/."""
    install_torch(session)
    session.install("-e", ".", *TYPE_TOOLS)
    session.run("mypy", "--strict", "src")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site with ``mkdocs build --strict``."""
    session.install("mkdocs-material>=9.5", "mkdocstrings[python]>=0.26")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")


@nox.session
def bench(session: nox.Session) -> None:
    """Run every benchmark in benchmarks/ and write JSON under benchmarks/results/."""
    install_torch(session)
    session.install("-e", ".[test]")
    scripts = session.posargs or sorted(
        os.path.join("benchmarks", f)
        for f in os.listdir("benchmarks")
        if f.startswith("bench_") and f.endswith(".py")
    )
    for script in scripts:
        session.run("python", script)
