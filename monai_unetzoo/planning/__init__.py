"""Planning a bundle from a data set (``unetzoo plan``): fingerprint -> rules -> plan -> bundle folder.

``fingerprint`` reads the data set, ``rules`` holds the planning heuristics with their reasons, ``timing`` measures
a training iteration for the epoch budget, ``plan`` applies the rules, ``writer`` and ``readme`` write the bundle,
``workflow`` is the command after argument parsing.
"""

from __future__ import annotations

from .fingerprint import CaseFingerprint, DatasetFingerprint, DatasetFingerprintError, fingerprint_dataset
from .plan import BundlePlan, make_bundle_plan
from .writer import write_planned_bundle

__all__ = ["CaseFingerprint", "DatasetFingerprint", "DatasetFingerprintError", "fingerprint_dataset",
           "BundlePlan", "make_bundle_plan", "write_planned_bundle"]
