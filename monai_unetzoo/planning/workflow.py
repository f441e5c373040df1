"""``unetzoo plan`` after argument parsing: fingerprint, plan, write; data problems exit 2 with the reason.

Called by :mod:`unetzoo_cli` with its parsed arguments (``dataset``, ``output``, ``budget_minutes``, ``device``,
``network``, ``max_cases``, ``name``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..data.msd import MSDDatasetError
from .fingerprint import DatasetFingerprintError, fingerprint_dataset
from .plan import make_bundle_plan
from .writer import write_planned_bundle

__all__ = ["run_plan_command", "EXIT_DATA"]

#: Exit status for a data set that cannot be planned (the CLI's usage/data error code).
EXIT_DATA = 2


def _summary_lines(plan) -> list[str]:
    return [f"  {r.name}: {r.value}" for r in plan.rules]


def _overwrite_problem(output: Path) -> str | None:
    """Why ``output`` must not be written: it holds a bundle that ``unetzoo plan`` did not write (a hand-written
    bundle such as the template itself would be replaced); None when it is new or a planned bundle."""
    meta = output / "metadata.json"
    if not meta.is_file():
        return None
    try:
        planned = "plan" in json.loads(meta.read_text())
    except (OSError, ValueError):
        planned = False
    return None if planned else f"{output} holds a bundle not written by unetzoo plan ({meta}); choose another --output"


def run_plan_command(args: argparse.Namespace) -> int:
    """Plan ``args.dataset`` into ``args.output``; returns the exit code (0 written, 2 refused)."""
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("unetzoo plan: error: --device cuda requested but CUDA is not available", file=sys.stderr)
        return EXIT_DATA
    output = Path(args.output)
    problem = _overwrite_problem(output)
    if problem:
        print(f"unetzoo plan: error: {problem}", file=sys.stderr)
        return EXIT_DATA
    try:
        fp = fingerprint_dataset(args.dataset, max_cases=args.max_cases, seed=0)
        plan = make_bundle_plan(fp, name=args.name or output.name, network=args.network, device=args.device,
                                budget_minutes=args.budget_minutes)
    except (MSDDatasetError, DatasetFingerprintError, ValueError) as exc:
        print(f"unetzoo plan: error: {exc}", file=sys.stderr)
        return EXIT_DATA
    write_planned_bundle(plan, fp, output)
    print(f"unetzoo plan: wrote {output} from {len(fp.cases)} of {fp.num_cases_total} case(s) of {fp.root}")
    print("\n".join(_summary_lines(plan)))
    return 0
