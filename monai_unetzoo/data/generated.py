"""Folders of generated (synthetic) data: reuse, refuse, write atomically, and say loudly that they are synthetic.

Shared by the synthetic DRIVE generator (:mod:`monai_unetzoo.data.synthetic`) and the synthetic MSD hippocampus
generator (:mod:`monai_unetzoo.data.msd`), the bundles' built-in defaults. The rules, the same for both:

* a folder holding a marker file with the same generation parameters is reused as is (cheap on every run);
* one generated with other parameters (or with ``overwrite``) is removed and generated again;
* a non-empty folder without the marker is never touched -- it may be real data -- and raises ``FileExistsError``;
* generation goes to a temporary sibling that is renamed into place, so concurrent callers (the ranks of a
  ``torchrun`` job) never see half-written data; a process that loses the rename race keeps the winner's copy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["reuse_or_clear_generated_folder", "generation_scratch_folder", "publish_generated_folder",
           "log_synthetic_data_banner"]


def _marker_matches(marker: Path, params: Mapping[str, Any]) -> bool:
    try:
        return marker.is_file() and json.loads(marker.read_text()) == dict(params)
    except (OSError, ValueError):
        return False


def reuse_or_clear_generated_folder(root: Path, marker_name: str, params: Mapping[str, Any],
                                    overwrite: bool = False) -> bool:
    """True when ``root`` already holds data generated with ``params`` (reuse it); otherwise make room and say False.

    Raises:
        FileExistsError: ``root`` is a non-empty folder without ``marker_name`` (never overwritten).
    """
    if not root.exists():
        return False
    marker = root / marker_name
    if marker.is_file():
        if not overwrite and _marker_matches(marker, params):
            return True
        shutil.rmtree(root)
    elif any(root.iterdir()):
        raise FileExistsError(
            f"{root} exists, is not empty and holds no {marker_name}: refusing to write synthetic data there.")
    else:
        root.rmdir()
    return False


def generation_scratch_folder(root: Path) -> Path:
    """An empty temporary sibling of ``root`` (``.<name>.tmp-<pid>``) to generate into."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def publish_generated_folder(tmp: Path, root: Path, marker_name: str, params: Mapping[str, Any]) -> Path:
    """Write the marker into ``tmp`` and rename it to ``root`` (atomic); keep a concurrent winner's equal copy."""
    (tmp / marker_name).write_text(json.dumps(dict(params), indent=2))
    try:
        os.rename(tmp, root)
    except OSError:  # another process renamed its copy into place first: keep that one if it matches
        shutil.rmtree(tmp, ignore_errors=True)
        if not _marker_matches(root / marker_name, params):
            raise
    return root


def log_synthetic_data_banner(logger: logging.Logger, sentinel: str, what: str, out: Path | str,
                              subject: str, real_option: str) -> None:
    """The loud WARNING a bundle logs when its ``dataset_dir`` was left at the synthetic default."""
    bar = "#" * 100
    logger.warning(
        "\n%s\n# SYNTHETIC DATA: dataset_dir was left at its default %r, so this run uses a small GENERATED data\n"
        "# set (%s) written to %s.\n"
        "# Results on it say nothing about %s. Train on real data with\n"
        "#   --dataset_dir %s\n%s",
        bar, sentinel, what, out, subject, real_option, bar,
    )


def exit_on_data_error(error: Exception) -> NoReturn:
    """Print a data-set error (its message lists every problem found) to stderr and exit with status 2.

    For bundle configs: ``monai.bundle run`` would otherwise bury the message under the traceback of its config
    resolution and exit with status 1, as for a crash.
    """
    print(f"ERROR: {error}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def raise_or_exit(error: Exception, exit_on_error: bool) -> NoReturn:
    """``raise error``, or with ``exit_on_error`` print it and exit with status 2 (:func:`exit_on_data_error`)."""
    if not exit_on_error:
        raise error
    exit_on_data_error(error)
