"""DICOM series as sources of DICOM outputs: their headers (pydicom, pixel data never read), the checks that turn a
bad series into one named error before any prediction, and the source slices in the order of a loaded grid.

Why checks of our own on top of GDCM's reading: GDCM/ITK stacks whatever slices a series has: slices with other
pixel spacings or matrix sizes are read on the first slice's grid, and a SR/PR object in the folder is not an
image at all. Each gives a wrong segmentation (or a GDCM message nobody understands); here each is a sentence in
the summary (``failed``, or ``skipped`` for non-image objects) and the rest of the batch goes on. Gaps, duplicated
positions and mixed orientations are refused when the series is read (:mod:`monai_unetzoo.header_checks`); these
checks complement those.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = [
    "SeriesHeaders",
    "read_series_headers",
    "series_header_problem",
    "transfer_syntax_note",
    "series_files",
    "classify_dicom_cases",
    "datasets_in_grid_order",
    "NON_IMAGE_MODALITIES",
]

#: Modalities of DICOM objects that carry no image to segment (reports, presentation states, our own outputs...).
NON_IMAGE_MODALITIES = {"SR", "PR", "KO", "SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "REG", "DOC", "AU", "ECG"}
_POSITION_TOL_MM = 1e-3  # positions/spacings agree when within this fraction of the slice spacing (plus 1 um)
_ORIENTATION_TOL = 1e-4


@dataclass
class SeriesHeaders:
    """The headers of one series' files (``datasets[i]`` read from ``files[i]``, pixel data not loaded)."""

    files: list[Path]
    datasets: list  # pydicom Dataset per file

    @property
    def series_instance_uid(self) -> str:
        return str(self.datasets[0].get("SeriesInstanceUID", ""))


def read_series_headers(files: Sequence[Path]) -> SeriesHeaders:
    """Headers of ``files`` (pydicom, ``stop_before_pixels``); unreadable files raise ``pydicom`` errors."""
    import pydicom

    files = [Path(f) for f in files]
    return SeriesHeaders(files, [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files])


def _is_image(ds) -> bool:
    return str(ds.get("Modality", "")).upper() not in NON_IMAGE_MODALITIES and "Rows" in ds and "Columns" in ds


def _geometry_problem(headers: SeriesHeaders) -> str | None:
    """Pixel spacing and matrix must agree across slices (else GDCM reads them on the first one's grid). Gaps,
    duplicated positions and mixed orientations are checked when the series is read
    (:func:`monai_unetzoo.header_checks.check_dicom_stack`)."""
    first = headers.datasets[0]
    for name in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        missing = [f.name for f, ds in zip(headers.files, headers.datasets) if name not in ds]
        if missing:
            return f"{len(missing)} slice(s) lack {name} (e.g. {missing[0]}); cannot place them in space"
    ref_ps = np.asarray([float(v) for v in first.PixelSpacing])
    for f, ds in zip(headers.files, headers.datasets):
        ps = np.asarray([float(v) for v in ds.PixelSpacing])
        if not np.allclose(ps, ref_ps, rtol=1e-4):
            return (f"inconsistent pixel spacing between slices: {f.name} has PixelSpacing {ps.tolist()}, "
                    f"{headers.files[0].name} {ref_ps.tolist()}")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            return (f"inconsistent matrix size between slices: {f.name} is {ds.Rows}x{ds.Columns}, "
                    f"{headers.files[0].name} {first.Rows}x{first.Columns}")
    return None


def series_header_problem(headers: SeriesHeaders) -> tuple[str, str] | None:
    """``(status, reason)`` when the series must not be predicted, else None: ``("skipped", ...)`` for objects
    without an image (SR, PR, SEG, ...), ``("failed", ...)`` for slices without position/orientation or with
    inconsistent pixel spacing/matrix size."""
    images = [ds for ds in headers.datasets if _is_image(ds)]
    if not images:
        kinds = sorted({str(ds.get("Modality", "?")) for ds in headers.datasets})
        return "skipped", f"not an image series (DICOM {'/'.join(kinds)} object(s)); nothing to segment"
    if len(images) != len(headers.datasets):
        return "failed", "the series mixes image and non-image objects"
    problem = _geometry_problem(headers)
    return ("failed", problem) if problem else None


def transfer_syntax_note(headers: SeriesHeaders) -> str:
    """Names the compressed transfer syntaxes of the series (for read errors), ``""`` when uncompressed."""
    names = set()
    for ds in headers.datasets:
        uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if uid is not None and uid.is_compressed:
            names.add(f"{uid.name} ({uid})")
    return f"compressed transfer syntax {', '.join(sorted(names))} could not be decoded" if names else ""


def series_files(folder: Path, series_id: str | None) -> list[Path]:
    """The files of one series of ``folder`` as GDCM (and so MONAI's ``ITKReader``) groups them."""
    from ..volume_io import dicom_series_in_folder

    series = dicom_series_in_folder(folder)
    for uid, names in series:
        if series_id is None or uid == series_id:
            return names
    raise FileNotFoundError(f"{folder}: no DICOM series {series_id!r}")


def classify_dicom_cases(cases: Sequence) -> None:
    """Run the header checks on every DICOM case of a discovery, in place: a problem becomes the case's
    ``problem`` (with ``problem_status``), so it is reported without reading any pixel. Files GDCM left out of
    every series are re-labelled ``skipped`` when they are non-image objects (a report, a presentation state)."""
    for case in cases:
        if case.family != "dicom":
            continue
        try:
            if case.problem is not None:
                if case.source.is_file():
                    headers = read_series_headers([case.source])
                    if not _is_image(headers.datasets[0]):
                        case.problem_status = "skipped"
                        case.problem = (f"{case.source}: not an image (DICOM {headers.datasets[0].get('Modality', '?')}"
                                        " object); nothing to segment")
                continue
            found = series_header_problem(read_series_headers(series_files(case.source, case.series_uid)))
        except Exception:  # unreadable headers: the reader reports it when the case is predicted
            continue
        if found is not None:
            case.problem_status, reason = found
            case.problem = f"{case.source}: {reason}"
            case.output = case.prob_output = None


def datasets_in_grid_order(headers: SeriesHeaders, grid) -> list:
    """The source slices ordered along the loaded grid's third axis: ``result[k]`` is the dataset whose
    ImagePositionPatient is voxel ``(0, 0, k)`` of ``grid`` (LPS), and whose rows/columns run along the grid's
    y/x axes, so that frame ``k`` of a derived object is ``labels[:, :, k].T``. Raises ``ValueError`` when the
    slices do not tile the grid exactly (the loaded volume and the headers disagree)."""
    origin, spacing, direction = (np.asarray(v, dtype=np.float64) for v in grid.itk_geometry)
    direction = direction.reshape(3, 3)
    nx, ny, nz = grid.spatial_shape
    positions = np.asarray([[float(v) for v in ds.ImagePositionPatient] for ds in headers.datasets])
    tol = _POSITION_TOL_MM * max(float(spacing[2]), 1.0) + 1e-3
    ordered = []
    for k in range(nz):
        expected = origin + direction[:, 2] * spacing[2] * k
        dist = np.linalg.norm(positions - expected, axis=1)
        i = int(np.argmin(dist))
        if dist[i] > tol:
            raise ValueError(f"no source slice at position {expected.round(4).tolist()} (slice {k} of the loaded grid)")
        ordered.append(headers.datasets[i])
    iop = np.asarray([float(v) for v in ordered[0].ImageOrientationPatient])
    if not (np.allclose(iop[:3], direction[:, 0], atol=_ORIENTATION_TOL) and np.allclose(iop[3:], direction[:, 1], atol=_ORIENTATION_TOL)):
        raise ValueError("the loaded grid's axes are not the slices' row/column directions")
    if (int(ordered[0].Columns), int(ordered[0].Rows)) != (nx, ny):
        raise ValueError(f"slices of {ordered[0].Columns}x{ordered[0].Rows} pixels, grid {nx}x{ny}")
    return ordered
