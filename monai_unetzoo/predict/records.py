"""What "done" means for a rerun: an output counts as done only when this run would write exactly it.

Each finished case leaves a record under ``<output>/.unetzoo/records/<output path>.json``: the bundle (name,
version), the checkpoint's SHA-256, the settings that shape the result (window, overlap, mirroring, precision,
threshold, post-processing) and the SHA-256 and size of every file written. A rerun skips a case only when its
record matches this run and the files are unchanged; an output from another checkpoint or settings, a damaged or
truncated file, or one without a record (another tool, an older version) is predicted again, and the summary says
why. A hidden folder keeps the records out of the way of viewers and PACS import tools.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..volume_io import atomic_output_path
from .bundle import PredictionBundle, file_sha256
from .discovery import PredictionCase
from .settings import ResolvedSettings

__all__ = ["OutputRecords", "RECORDS_FOLDER"]

RECORDS_FOLDER = Path(".unetzoo") / "records"
#: Settings that do not change the written result (beyond floating-point summation order) and so do not force a
#: rerun: where the windows run and on how many threads.
_SETTINGS_NOT_IN_KEY = ("device", "threads", "backend_choice")


class OutputRecords:
    """Records of the outputs written under ``out_root`` by runs of ``bundle`` with ``settings``."""

    def __init__(self, out_root: Path, bundle: PredictionBundle, settings: ResolvedSettings, save_probabilities: bool):
        self.out_root = Path(out_root)
        self.key = {
            "bundle": bundle.name,
            "bundle_version": bundle.version,
            "checkpoint_sha256": bundle.checkpoint_sha256,
            "settings": {k: v for k, v in settings.as_dict().items() if k not in _SETTINGS_NOT_IN_KEY},
        }
        self.save_probabilities = save_probabilities

    def _record_path(self, case: PredictionCase) -> Path:
        rel = os.path.relpath(case.output, self.out_root)
        return self.out_root / RECORDS_FOLDER / (rel + ".json")

    def _outputs(self, case: PredictionCase) -> list[Path]:
        extra = [case.prob_output] if self.save_probabilities and case.prob_output is not None else []
        return [case.output, *extra]

    def why_not_done(self, case: PredictionCase) -> str | None:
        """None when ``case``'s outputs are complete and were written by this bundle, checkpoint and settings;
        otherwise the reason it must be predicted (again)."""
        outputs = self._outputs(case)
        if not all(p.is_file() for p in outputs):
            return "not predicted yet"
        try:
            record = json.loads(self._record_path(case).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return "existing output has no record of how it was made (another tool or an older run); predicted again"
        return self._mismatch(record, outputs)

    def _mismatch(self, record: dict[str, Any], outputs: list[Path]) -> str | None:
        old = record.get("key", {})
        if old.get("checkpoint_sha256") != self.key["checkpoint_sha256"]:
            return (f"existing output was made with another checkpoint (sha256 {str(old.get('checkpoint_sha256'))[:12]}"
                    f"... vs {self.key['checkpoint_sha256'][:12]}...); predicted again")
        if old != self.key:
            changed = sorted(k for k in set(old.get("settings", {})) | set(self.key["settings"])
                             if old.get("settings", {}).get(k) != self.key["settings"].get(k))
            return f"existing output was made with other settings ({', '.join(changed) or 'bundle'}); predicted again"
        files = record.get("files", {})
        for p in outputs:
            entry = files.get(p.name)
            if entry is None or entry.get("size") != p.stat().st_size or entry.get("sha256") != file_sha256(p):
                return f"existing output {p.name} changed or is damaged since it was written; predicted again"
        return None

    def write(self, case: PredictionCase) -> None:
        """Record ``case``'s outputs (call after they are written); atomic like every output."""
        files = {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in self._outputs(case)}
        path = self._record_path(case)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output_path(path) as tmp:
            tmp.write_text(json.dumps({"key": self.key, "files": files}, indent=1) + "\n", encoding="utf-8")
