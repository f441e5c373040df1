"""A PACS in the loop: cases from a DICOMweb server (QIDO-RS to find the series, WADO-RS to fetch them) and the
SEG stored back into the same study (STOW-RS), with ``dicomweb-client``.

``--input dicomweb+http://HOST:PORT/dicom-web`` with ``--study UID`` (repeatable), or ``--query KEY=VALUE``
(a QIDO-RS study query, e.g. ``PatientID=123``; neither: every study the server lists). Each image series of
each study is one :class:`RemoteSeriesCase`; non-image series (SR, PR, SEG, ...) are listed as skipped. With
``--push`` a series whose study already holds a SEG of ours made with the same checkpoint (its segments'
algorithm parameters name the checkpoint's SHA-256) and referencing that series is skipped: resume works through
the PACS itself. A series is fetched only when its case runs, into ``<output>/.dicomweb/<study>/<series>/``, so
a series that cannot be fetched or read is that case's error and the others go on.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .dicom_series import NON_IMAGE_MODALITIES
from .discovery import PredictionCase

__all__ = ["DICOMWEB_PREFIX", "RemoteSeriesCase", "is_dicomweb_input", "dicomweb_url", "discover_dicomweb_cases",
           "fetch_remote_series", "push_dataset"]

DICOMWEB_PREFIX = "dicomweb+"
_SEG_MODALITY = "SEG"


@dataclass
class RemoteSeriesCase(PredictionCase):
    """A series on a DICOMweb server; ``source`` is the local folder it is fetched into."""

    url: str = ""
    study_uid: str = ""
    remote_series_uid: str = ""


def is_dicomweb_input(spec: str) -> bool:
    return str(spec).lower().startswith(DICOMWEB_PREFIX)


def dicomweb_url(spec: str) -> str:
    """``dicomweb+http://host:8042/dicom-web`` -> ``http://host:8042/dicom-web``."""
    url = str(spec)[len(DICOMWEB_PREFIX):].rstrip("/")
    if not url.lower().startswith(("http://", "https://")):
        raise ValueError(f"--input {spec}: expected dicomweb+http://HOST:PORT/PATH or dicomweb+https://...")
    return url


def _client(url: str):
    from dicomweb_client.api import DICOMwebClient

    return DICOMwebClient(url=url)


def _value(item: dict, tag: str) -> str:
    """A value of a DICOM JSON item (``{"0020000E": {"vr": "UI", "Value": [...]}}``), ``""`` when absent."""
    values = item.get(tag, {}).get("Value", [])
    return str(values[0]) if values else ""


def _studies(client, studies: Sequence[str], query: dict[str, str]) -> list[str]:
    if studies:
        return list(studies)
    found = client.search_for_studies(search_filters=dict(query))
    return sorted({_value(s, "0020000D") for s in found} - {""})


def _our_segmented_series(client, study: str, seg_series: list[str], checkpoint_sha256: str) -> set[str]:
    """Source series UIDs that a SEG of this checkpoint in ``study`` references."""
    import pydicom

    from .dicom_seg import seg_made_by

    done = set()
    for series in seg_series:
        for item in client.retrieve_series_metadata(study, series):
            ds = pydicom.Dataset.from_json(item)
            if seg_made_by(ds, checkpoint_sha256):
                done |= {str(r.SeriesInstanceUID) for r in ds.get("ReferencedSeriesSequence", [])}
    return done


def _study_cases(client, url: str, study: str, out_root: Path, suffix: str, skip_done: str | None) -> list[RemoteSeriesCase]:
    series = client.search_for_series(study)
    segs = [_value(s, "0020000E") for s in series if _value(s, "00080060").upper() == _SEG_MODALITY]
    done = _our_segmented_series(client, study, segs, skip_done) if skip_done else set()
    cases = []
    for s in sorted(series, key=lambda s: _value(s, "0020000E")):
        uid, modality = _value(s, "0020000E"), _value(s, "00080060").upper()
        case = RemoteSeriesCase(
            case_id=f"{study}/{uid}", source=out_root / ".dicomweb" / study / uid, family="dicom",
            rel_stem=f"{study}/{uid}", url=url, study_uid=study, remote_series_uid=uid,
        )
        if modality in NON_IMAGE_MODALITIES:
            case.problem_status, case.problem = "skipped", f"{url} series {uid}: a {modality} series, not an image"
        elif uid in done:
            case.problem_status = "skipped"
            case.problem = f"{url} series {uid}: the study already holds our SEG of this checkpoint (already done)"
        else:
            case.output = out_root / f"{case.rel_stem}{suffix}"
            case.prob_output = out_root / f"{case.rel_stem}_prob.nii.gz"
        cases.append(case)
    return cases


def discover_dicomweb_cases(spec: str, studies: Sequence[str], query: dict[str, str], out_root: Path,
                            suffix: str, skip_done_checkpoint: str | None) -> list[PredictionCase]:
    """Cases of the series on the server ``spec`` (see the module docstring). ``suffix`` names the outputs
    (``_seg.dcm``); ``skip_done_checkpoint`` (the checkpoint's SHA-256 with ``--push``) marks the series a SEG of
    ours already covers as skipped. A study the server cannot list becomes one failed case; raises ``ValueError``
    for a malformed URL and ``OSError`` (connection) when the server cannot be reached at all."""
    import requests

    url = dicomweb_url(spec)
    client = _client(url)
    try:
        study_uids = _studies(client, studies, query)
    except requests.RequestException as exc:
        raise OSError(f"cannot query the DICOMweb server {url}: {type(exc).__name__}: {exc}") from exc
    cases: list[PredictionCase] = []
    for study in study_uids:
        try:
            cases.extend(_study_cases(client, url, study, out_root, suffix, skip_done_checkpoint))
        except Exception as exc:  # one study that cannot be listed must not stop the others
            cases.append(PredictionCase(case_id=f"{study}/", source=out_root / ".dicomweb" / study, family="dicom",
                                        rel_stem=study, problem=f"{url} study {study}: cannot be listed "
                                        f"({type(exc).__name__}: {exc})"))
    return cases


def fetch_remote_series(case: RemoteSeriesCase) -> list[Path]:
    """Fetch the series of ``case`` (WADO-RS) into ``case.source`` (replaced whole: never a mix of two fetches);
    returns the files written."""
    import pydicom

    datasets = _client(case.url).retrieve_series(case.study_uid, case.remote_series_uid)
    tmp = case.source.with_name(f".{case.source.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = []
    for i, ds in enumerate(datasets):
        path = tmp / f"{i:05d}.dcm"
        pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
        files.append(case.source / path.name)
    shutil.rmtree(case.source, ignore_errors=True)
    os.replace(tmp, case.source)
    return files


def push_dataset(url: str, ds) -> None:
    """Store ``ds`` on the server (STOW-RS); raises on any refusal."""
    _client(url).store_instances([ds])
