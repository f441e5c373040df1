"""The ``unetzoo`` command line lives in :mod:`unetzoo_cli` (importable without torch or MONAI, so that ``--help``
answers at once); re-exported here for ``python -m monai_unetzoo`` and existing imports."""

from __future__ import annotations

from unetzoo_cli import build_arg_parser, main

__all__ = ["main", "build_arg_parser"]
