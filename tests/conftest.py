"""Shared test configuration.

The suite runs on the CPU. ``GMMSEG_TEST_DEVICE=cuda`` (or ``cuda:N``) runs it on a GPU instead:
the device becomes PyTorch's default device, so every tensor and module a test creates without
naming a device lives there, and the ``device`` fixture names it for tests that move data
explicitly. Test modules that are CPU-only by nature (file formats, data loading, the command
line, multi-process runs) set ``pytestmark = pytest.mark.cpu_only("why")`` and are skipped on a
GPU run with that reason. ``nox -s gpu`` runs the suite this way.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

settings.register_profile(
    "default",
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("ci", parent=settings.get_profile("default"), derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")


def _test_device() -> torch.device:
    name = os.environ.get("GMMSEG_TEST_DEVICE", "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise pytest.UsageError(
            f"GMMSEG_TEST_DEVICE must be cpu, cuda or cuda:N, got {name!r}"
        ) from None


TEST_DEVICE = _test_device()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cpu_only(reason): CPU-only by nature; skipped when GMMSEG_TEST_DEVICE is a GPU"
    )
    if TEST_DEVICE.type == "cuda":
        if not torch.cuda.is_available():
            raise pytest.UsageError(
                f"GMMSEG_TEST_DEVICE={TEST_DEVICE} but this torch has no CUDA device "
                f"(torch {torch.__version__}, CUDA {torch.version.cuda})"
            )
        torch.set_default_device(TEST_DEVICE)
    elif TEST_DEVICE.type != "cpu":
        raise pytest.UsageError(
            f"GMMSEG_TEST_DEVICE must be cpu, cuda or cuda:N, got {TEST_DEVICE}"
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if TEST_DEVICE.type == "cpu":
        return
    for item in items:
        marker = item.get_closest_marker("cpu_only")
        if marker is not None:
            reason = marker.args[0] if marker.args else marker.kwargs.get("reason", "CPU only")
            item.add_marker(pytest.mark.skip(reason=f"CPU-only: {reason}"))


@pytest.fixture
def device() -> torch.device:
    """The device the suite runs on (``GMMSEG_TEST_DEVICE``, default CPU)."""
    return TEST_DEVICE
