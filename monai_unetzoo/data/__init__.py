"""Data sets: DRIVE datalists, the synthetic DRIVE-layout generator used as the bundles' default."""

from __future__ import annotations

from .drive import (
    DRIVE_KEYS,
    DRIVE_LOADER_KWARGS,
    DRIVE_SECTIONS,
    SYNTHETIC_SENTINEL,
    DriveDatasetError,
    build_drive_datalist,
    default_bundle_root,
    drive_case_paths,
    drive_datalists,
    inference_datalist,
    labelled_split,
    resolve_drive_dataset_dir,
    split_drive_cases,
)
from .synthetic import SYNTHETIC_MARKER, draw_synthetic_fundus, write_synthetic_drive

__all__ = [
    "DRIVE_KEYS",
    "DRIVE_LOADER_KWARGS",
    "DRIVE_SECTIONS",
    "SYNTHETIC_MARKER",
    "SYNTHETIC_SENTINEL",
    "DriveDatasetError",
    "build_drive_datalist",
    "default_bundle_root",
    "draw_synthetic_fundus",
    "drive_case_paths",
    "drive_datalists",
    "inference_datalist",
    "labelled_split",
    "resolve_drive_dataset_dir",
    "split_drive_cases",
    "write_synthetic_drive",
]
