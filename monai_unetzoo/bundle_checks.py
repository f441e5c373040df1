"""MONAI model-zoo conformance checks for our flat bundles (``bundles/<name>/metadata.json``, ``train.json``, ...).

The rules are those of the MONAI model-zoo's CI and contributing guide (Project-MONAI/model-zoo,
``ci/verify_bundle.py`` and ``CONTRIBUTING.md``), written here for the flat layout, where the zoo's
``configs/metadata.json`` is ``metadata.json`` and its ``configs/train.json`` is ``train.json``:

* required files: ``metadata.json`` and ``LICENSE`` in the bundle folder; preferred: ``inference.json`` (the zoo
  also prefers shipped ``models/model.pt`` weights -- ours are trained by the user, so that one is not checked);
* ``version`` and ``changelog`` in the metadata, the version one of the changelog's entries; we also require
  ``MAJOR.MINOR.PATCH`` versions and the version to be the newest entry (what the zoo's "bump the version when the
  bundle changes" rule amounts to without its ``model_info.json`` registry);
* the metadata keys the bundle schema requires (the full schema is checked by MONAI's ``verify_metadata``);
* key naming in ``train.json``: ``bundle_root``, ``device``, ``dataset_dir``, ``output_dir``; ``train#trainer``,
  ``train#trainer#max_epochs``, ``train#dataset``, ``train#dataset#data``, ``train#handlers``;
  ``validate#evaluator``, ``validate#handlers``, ``validate#dataset``, ``validate#dataset#data``; a
  ``ValidationHandler`` interval given as ``@val_interval``;
* key naming in ``inference.json``: ``bundle_root``, ``device``, ``network_def``, ``inferer``, ``output_dir``.

Every check returns ``{check_id: message}`` (empty when it passes), the id being ``<file>:<key>`` or
``file:<name>``, so that a caller can allow a documented exception by its id, as the zoo does with the lists of
its ``ci/bundle_custom_data.py``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "REQUIRED_BUNDLE_FILES",
    "PREFERRED_BUNDLE_FILES",
    "missing_bundle_files",
    "version_problems",
    "metadata_key_problems",
    "train_config_key_problems",
    "inference_config_key_problems",
    "zoo_conformance_problems",
]

REQUIRED_BUNDLE_FILES = ("metadata.json", "LICENSE")
PREFERRED_BUNDLE_FILES = ("inference.json",)
#: Keys the bundle metadata schema (meta_schema_20240725.json) requires at the top level.
SCHEMA_REQUIRED_KEYS = ("schema", "version", "monai_version", "pytorch_version", "numpy_version",
                        "required_packages_version", "task", "description", "authors", "copyright",
                        "network_data_format")
TRAIN_TOP_KEYS = ("bundle_root", "device", "dataset_dir", "output_dir")
TRAIN_SECTION_KEYS = {
    "train": ("trainer", "trainer#max_epochs", "dataset", "dataset#data", "handlers"),
    "validate": ("evaluator", "handlers", "dataset", "dataset#data"),
}
INFERENCE_TOP_KEYS = ("bundle_root", "device", "network_def", "inferer", "output_dir")
_SEMVER = re.compile(r"^\d+\.\d+\.\d+$")


def _load_json(path: str | os.PathLike) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def missing_bundle_files(bundle_dir: str | os.PathLike) -> dict[str, str]:
    """Required and preferred files absent from the bundle folder (ids ``file:<name>``)."""
    root = Path(bundle_dir)
    problems = {}
    for name in REQUIRED_BUNDLE_FILES:
        if not (root / name).is_file():
            problems[f"file:{name}"] = f"necessary file {name} is missing in {root}"
    for name in PREFERRED_BUNDLE_FILES:
        if not (root / name).is_file():
            problems[f"file:{name}"] = f"preferred file {name} is missing in {root}"
    return problems


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def version_problems(metadata: Mapping[str, Any]) -> dict[str, str]:
    """``version`` / ``changelog`` consistency of a bundle's metadata (ids ``metadata.json:<key>``)."""
    version, changelog = metadata.get("version"), metadata.get("changelog")
    if version is None or not isinstance(changelog, Mapping) or not changelog:
        missing = [k for k, v in (("version", version), ("changelog", changelog)) if not v]
        return {f"metadata.json:{k}": f"'{k}' is missing or empty in metadata.json" for k in missing}
    problems = {}
    bad = [v for v in [version, *changelog] if not _SEMVER.match(str(v))]
    if bad:
        problems["metadata.json:version_format"] = f"versions must be MAJOR.MINOR.PATCH, got {bad}"
    if version not in changelog:
        problems["metadata.json:changelog"] = f"version {version} has no entry in 'changelog'"
    elif not bad and max(changelog, key=_version_key) != version:
        problems["metadata.json:version"] = (f"version {version} is not the newest changelog entry "
                                             f"({max(changelog, key=_version_key)})")
    return problems


def metadata_key_problems(metadata: Mapping[str, Any], required: Iterable[str] = SCHEMA_REQUIRED_KEYS) -> dict[str, str]:
    """Top-level keys the metadata schema requires that ``metadata`` lacks (ids ``metadata.json:<key>``)."""
    return {f"metadata.json:{k}": f"required metadata key '{k}' is missing" for k in required if k not in metadata}


def _has_id(config: Mapping[str, Any], config_id: str) -> bool:
    """Whether the nested config holds ``config_id`` (``a#b#c``) as plain keys (not behind a ``$`` expression)."""
    node: Any = config
    for part in config_id.split("#"):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def _validation_handler_problems(config: Mapping[str, Any]) -> dict[str, str]:
    """The zoo's rule: a ``ValidationHandler`` takes its ``interval`` from the top-level ``val_interval``."""
    handlers = config.get("train", {}).get("handlers", [])
    uses = [h for h in handlers if isinstance(h, Mapping) and str(h.get("_target_", "")).endswith("ValidationHandler")]
    if uses and ("val_interval" not in config or any(h.get("interval") != "@val_interval" for h in uses)):
        return {"train.json:val_interval": "ValidationHandler must use the top-level key val_interval: "
                                           "\"interval\": \"@val_interval\""}
    return {}


def train_config_key_problems(config: Mapping[str, Any]) -> dict[str, str]:
    """Key naming of a training config, as the zoo requires it (ids ``train.json:<config id>``)."""
    problems = {f"train.json:{k}": f"training config lacks the key '{k}'" for k in TRAIN_TOP_KEYS if k not in config}
    for section, keys in TRAIN_SECTION_KEYS.items():
        if section not in config:
            continue
        for key in keys:
            full = f"{section}#{key}"
            if not _has_id(config, full):
                problems[f"train.json:{full}"] = f"training config lacks the component '{full}'"
    problems.update(_validation_handler_problems(config))
    return problems


def inference_config_key_problems(config: Mapping[str, Any]) -> dict[str, str]:
    """Key naming of an inference config, as the zoo requires it (ids ``inference.json:<key>``)."""
    return {f"inference.json:{k}": f"inference config lacks the key '{k}'" for k in INFERENCE_TOP_KEYS
            if k not in config}


def zoo_conformance_problems(bundle_dir: str | os.PathLike) -> dict[str, str]:
    """Every check above on one flat bundle folder; ``{}`` when the bundle conforms.

    ``inference.json`` is checked as a self-contained config (the zoo runs it alone).
    """
    root = Path(bundle_dir)
    problems = missing_bundle_files(root)
    if (root / "metadata.json").is_file():
        metadata = _load_json(root / "metadata.json")
        problems.update(version_problems(metadata))
        problems.update(metadata_key_problems(metadata))
    if (root / "train.json").is_file():
        problems.update(train_config_key_problems(_load_json(root / "train.json")))
    if (root / "inference.json").is_file():
        problems.update(inference_config_key_problems(_load_json(root / "inference.json")))
    return problems
