"""Nox sessions: tests, lint, typecheck, docs, bench.

The sessions install a CPU build of PyTorch by default (``torch==2.13.0``). An unpinned ``torch``
would pull a multi-GB CUDA build; set ``GMMSEG_TORCH`` to choose another requirement, e.g.
``GMMSEG_TORCH="torch==2.5.1 --index-url https://download.pytorch.org/whl/cpu"`` (split on
spaces), or ``GMMSEG_TORCH=skip`` to use the torch that pip finds already satisfied (only meaningful
with ``--no-venv``).
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests", "tests_vision", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = False

TORCH = os.environ.get("GMMSEG_TORCH", "torch==2.13.0").split()
# timm and torch-fidelity import torchvision, which cannot import beside the CPU torch 2.13.0
# wheel; their tests run in a second session on this working pair (a CUDA build, run on CPU).
VISION_TORCH = os.environ.get("GMMSEG_VISION_TORCH", "torch==2.14.1 torchvision==0.29.1").split()
LINT_TOOLS = ["ruff==0.17.6"]
TYPE_TOOLS = ["mypy==2.4.1", "types-tqdm"]
DOCS_TOOLS = [
    "mkdocs==1.6.1",
    "mkdocs-material==9.8.1",
    "mkdocstrings==1.0.8",
    "mkdocstrings-python==2.0.11",
]


def install_torch(session: nox.Session) -> None:
    """Install the pinned torch first so that the package's ``torch>=`` is already satisfied."""
    if TORCH != ["skip"]:
        session.install(*TORCH)


@nox.session
def tests(session: nox.Session) -> None:
    """The CPU test suite but the ``vision`` tests (pass pytest arguments after ``--``)."""
    install_torch(session)
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "not vision", *(session.posargs or ["-q"]))


@nox.session
def tests_vision(session: nox.Session) -> None:
    """Tests marked ``vision`` (timm, torchvision, torch-fidelity; TensorBoard) on that pair."""
    session.install(*VISION_TORCH)
    session.install("-e", ".[test,timm,fidelity,tensorboard]")
    session.run("pytest", "-m", "vision", *(session.posargs or ["-q"]))


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
    # safetensors (checkpoint loader) and matplotlib (viz curves) are imported lazily; mypy
    # needs their types.
    session.install("-e", ".", "safetensors>=0.4", "matplotlib>=3.7", *TYPE_TOOLS)
    session.run("mypy", "--strict", "src")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site with ``mkdocs build --strict``."""
    # Not `.[docs]`: that would resolve torch unpinned. mkdocstrings reads src/ statically.
    session.install(*DOCS_TOOLS)
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")
    session.run("python", "docs/hooks/check_site.py", "site")


@nox.session(venv_backend="none")
def gpu(session: nox.Session) -> None:
    """The test suite on CUDA, then ``benchmarks/bench_gpu.py`` (not in the default sessions).

    Runs in the current environment, which must already hold a CUDA build of torch (e.g.
    ``pip install torch==2.14.1`` on Linux x86_64 picks one): this session installs gmmseg's
    test extra beside it and never replaces torch. ``GMMSEG_TEST_DEVICE`` (default ``cuda``)
    picks the GPU; pytest arguments go after ``--``.
    """
    check = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    try:
        session.run("python", "-c", check, silent=True)
    except nox.command.CommandFailed:
        session.error("nox -s gpu needs a CUDA build of torch and a visible GPU")
    session.run("python", "-m", "pip", "install", "-e", ".[test]")
    device = os.environ.get("GMMSEG_TEST_DEVICE", "cuda")
    session.run(
        "python",
        "-m",
        "pytest",
        "-m",
        "not vision",
        *(session.posargs or ["-q"]),
        env={"GMMSEG_TEST_DEVICE": device},
    )
    session.run("python", "benchmarks/bench_gpu.py", "--device", device)


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
