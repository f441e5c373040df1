"""Data sets: DRIVE and MSD (Task04 hippocampus) datalists, and the synthetic generators used as the bundles' defaults."""

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
    write_drive_msd_folder,
)
from .msd import (
    MSD_SYNTHETIC_SENTINEL,
    MSDDatasetError,
    build_msd_datalist,
    msd_datalists,
    resolve_msd_dataset_dir,
    split_msd_cases,
    volume_inference_datalist,
    write_synthetic_msd_hippocampus,
)
from .synthetic import SYNTHETIC_MARKER, draw_synthetic_fundus, write_synthetic_drive

__all__ = [
    "DRIVE_KEYS",
    "DRIVE_LOADER_KWARGS",
    "DRIVE_SECTIONS",
    "MSD_SYNTHETIC_SENTINEL",
    "MSDDatasetError",
    "SYNTHETIC_MARKER",
    "SYNTHETIC_SENTINEL",
    "DriveDatasetError",
    "build_drive_datalist",
    "build_msd_datalist",
    "default_bundle_root",
    "draw_synthetic_fundus",
    "drive_case_paths",
    "drive_datalists",
    "inference_datalist",
    "labelled_split",
    "msd_datalists",
    "resolve_msd_dataset_dir",
    "resolve_drive_dataset_dir",
    "split_drive_cases",
    "split_msd_cases",
    "volume_inference_datalist",
    "write_drive_msd_folder",
    "write_synthetic_drive",
    "write_synthetic_msd_hippocampus",
]
