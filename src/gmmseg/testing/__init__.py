"""Miniature datasets for tests, examples and dry runs.

Every writer produces small files in the exact on-disk layout of a real dataset (or of gmmseg's
folder datasets), so code that reads the real data can be tested without it:

- `write_fixture`: a miniature copy of each supported dataset's layout, with a ``{name}.json``
  of the expected frames and label values next to it;
- `write_broken_fixture`: the same with one documented defect, for rejection tests;
- `write_folder_fixture` / `write_anomaly_folder_fixture`: folders of images, labels and a class
  file for ``FolderDataset`` / ``FolderAnomaly``.

The writers create new folders and never overwrite a file they did not write.
"""

from gmmseg.testing.datasets import write_broken_fixture, write_fixture
from gmmseg.testing.folders import write_anomaly_folder_fixture, write_folder_fixture

__all__ = [
    "write_anomaly_folder_fixture",
    "write_broken_fixture",
    "write_fixture",
    "write_folder_fixture",
]
