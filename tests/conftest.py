"""Shared test fixtures.

Real data lives outside the repository (research-use terms forbid copying it in): by default in
``../shared/data`` beside the checkout, or wherever ``UNETZOO_DATA_DIR`` points. When it is absent the tests
that need it are skipped with the reason; CI sets ``UNETZOO_REQUIRE_DATA=1`` so that a missing data set is a
failure there instead of a silent skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("UNETZOO_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
REQUIRE_DATA = os.environ.get("UNETZOO_REQUIRE_DATA", "0").lower() in ("1", "true", "yes")
#: MONAI's bundle metadata schema, offline (the URL in metadata.json cannot be downloaded on the test machines).
SCHEMA_FILE = Path(os.environ.get("UNETZOO_SCHEMA_FILE",
                                  REPO_ROOT.parent / "shared" / "schema" / "meta_schema_20240725.json"))

# The suite runs on 2 cores next to other work; a fixed small thread count keeps timings predictable.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def _skip_or_fail(reason: str) -> None:
    if REQUIRE_DATA:
        pytest.fail(f"UNETZOO_REQUIRE_DATA is set but {reason}")
    pytest.skip(reason)


def require_data(*parts: str) -> Path:
    """Path to ``DATA_DIR/<parts>``; skip (or fail under UNETZOO_REQUIRE_DATA=1) when it does not exist."""
    path = DATA_DIR.joinpath(*parts)
    if not path.exists():
        _skip_or_fail(f"real data not found at {path} (set UNETZOO_DATA_DIR to the folder holding DRIVE, "
                      "Task04_Hippocampus, ...)")
    return path


@pytest.fixture
def bundle_schema() -> Path:
    """The offline copy of MONAI's bundle metadata schema; skip (or fail under UNETZOO_REQUIRE_DATA=1) without it."""
    if not SCHEMA_FILE.is_file():
        _skip_or_fail(f"bundle metadata schema not found at {SCHEMA_FILE} (set UNETZOO_SCHEMA_FILE)")
    return SCHEMA_FILE


@pytest.fixture
def drive_dir() -> Path:
    return require_data("DRIVE")


@pytest.fixture
def hippocampus_dir() -> Path:
    return require_data("Task04_Hippocampus")


@pytest.fixture
def totalseg_dir() -> Path:
    return require_data("TotalSegmentator_examples")


@pytest.fixture
def isbi_dir() -> Path:
    return require_data("ISBI2012_EM")
