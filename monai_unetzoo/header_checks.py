"""Header checks before and after reading a scan: honour the header exactly, or refuse the case with the reason.

Never "repair" a grid silently: a result on a grid other than the input's is wrong in a way no one can see.

* declared size against the file: a header claiming gigabytes in a small file is refused before anything is
  allocated (deflate cannot compress more than about 1032:1, so no valid file holds more than that);
* a separate data file (``.mhd``'s ``ElementDataFile``, ``.nhdr``'s ``data file``) that is missing is named;
* NIfTI spatial units (``xyzt_units``): metres and micrometres are converted to millimetres for the network's
  preprocessing (the output keeps the input's own header); a zero or non-finite voxel size is refused (a
  negative ``pixdim`` is an orientation: nibabel's affine keeps its sign, and so does the output);
* a DICOM series must be a regular stack: no missing, duplicated or out-of-plane slice, one orientation, slice
  positions evenly spaced at the spacing the reader assumed (ITK builds a uniform grid from the first slices, so
  a gap would shift every slice after it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = [
    "HeaderCheckError",
    "MAX_DEFLATE_RATIO",
    "check_declared_size",
    "check_separate_data_file",
    "nifti_unit_scale",
    "check_voxel_sizes",
    "check_nifti_pixdim",
    "check_dicom_stack",
]

#: An upper bound of the deflate compression ratio (a run of one byte compresses about 1032:1).
MAX_DEFLATE_RATIO = 1100.0
_NIFTI_UNIT_MM = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3, "unknown": 1.0}


class HeaderCheckError(ValueError):
    """A header that cannot be honoured; the message names the file and the problem."""


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.3g} GB"


def check_separate_data_file(path: Path) -> Path | None:
    """The data file a detached header (``.mhd``/``.nhdr``) names, or None; raise if it is missing."""
    suffix = path.name.lower()
    if not suffix.endswith((".mhd", ".nhdr")):
        return None
    text = path.read_text(encoding="latin-1", errors="replace")
    key = r"ElementDataFile\s*=\s*(.+)" if suffix.endswith(".mhd") else r"data file\s*:\s*(.+)"
    m = re.search(key, text, flags=re.IGNORECASE)
    if m is None:
        return None
    name = m.group(1).strip()
    if name.upper() in ("LOCAL", "LIST") or "%" in name:  # inline data, or a file list/pattern: ITK checks those
        return None
    data = (path.parent / name) if not Path(name).is_absolute() else Path(name)
    if not data.is_file():
        raise HeaderCheckError(f"{path}: its data file {data} (named by the header) is missing")
    return data


def check_declared_size(path: Path, family: str) -> None:
    """Refuse a file whose header declares more data than the file can hold, before reading it."""
    data = check_separate_data_file(path) or path
    declared = _declared_min_bytes(path, family)
    if declared is None:
        return
    size = data.stat().st_size
    if declared > MAX_DEFLATE_RATIO * max(size, 1):
        raise HeaderCheckError(
            f"{path}: the header declares an image of at least {_gb(declared)} but the file holds {size} bytes "
            "(more than any compression allows): a corrupt or hostile header, not read"
        )
    if family == "nifti" and not path.name.lower().endswith(".gz"):
        import nibabel as nib

        need = int(nib.load(str(path)).header.get_data_offset()) + declared
        if need > size:
            raise HeaderCheckError(f"{path}: truncated: the header declares {need} bytes, the file holds {size}")


def _declared_min_bytes(path: Path, family: str) -> int | None:
    if family == "nifti":
        import nibabel as nib

        header = nib.load(str(path)).header
        return int(np.prod(header.get_data_shape(), dtype=np.float64)) * header.get_data_dtype().itemsize
    if family == "itk":
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        voxels = float(np.prod(reader.GetSize(), dtype=np.float64)) * reader.GetNumberOfComponents()
        return int(voxels)  # at least one byte per component
    return None


def nifti_unit_scale(nifti_image: Any) -> float:
    """Millimetres per unit of a NIfTI header's spatial unit (``xyzt_units``); "unknown" is taken as mm (the
    NIfTI convention nibabel and ITK follow)."""
    unit = nifti_image.header.get_xyzt_units()[0]
    return _NIFTI_UNIT_MM.get(str(unit), 1.0)


def check_nifti_pixdim(nifti_image: Any, path: Path) -> None:
    """Refuse a NIfTI whose grid comes from ``pixdim`` (no sform) with a zero or non-finite spacing: nibabel would
    silently take 1 mm for it ("setting 0 dims to 1")."""
    from nibabel.openers import ImageOpener

    with ImageOpener(str(path)) as f:  # the header as stored: nibabel's load already "fixed" zero pixdim to 1
        header = type(nifti_image.header).from_fileobj(f, check=False)
    ndim = min(3, int(header["dim"][0]))
    pixdim = np.asarray(header["pixdim"][1 : ndim + 1], dtype=np.float64)
    if int(header["sform_code"]) == 0 and (not np.all(np.isfinite(pixdim)) or np.any(pixdim == 0)):
        raise HeaderCheckError(
            f"{path}: the header gives a zero or invalid voxel size (pixdim {pixdim.tolist()}, no sform); "
            "refusing to guess a grid"
        )


def check_voxel_sizes(affine: np.ndarray, path: Path) -> None:
    """Refuse a grid whose voxel size is zero or not finite along some axis (a ``pixdim`` of 0 or NaN)."""
    d = affine.shape[0] - 1
    sizes = np.linalg.norm(affine[:d, :d], axis=0)
    bad = [i for i, s in enumerate(sizes) if not np.isfinite(s) or s <= 1e-12]
    if bad or not np.all(np.isfinite(affine)):
        raise HeaderCheckError(
            f"{path}: the header gives a zero or invalid voxel size along axis {bad or 'origin'} "
            f"(voxel sizes {sizes.tolist()}); refusing to guess a grid"
        )


def _slice_geometry(files: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(origins (N, 3) LPS mm, directions (N, 9)) of each file of a DICOM series, from their headers only."""
    import SimpleITK as sitk

    origins, directions = [], []
    for f in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(f))
        reader.ReadImageInformation()
        origins.append(reader.GetOrigin()[:3])
        directions.append(reader.GetDirection()[:9])
    return np.asarray(origins, dtype=np.float64), np.asarray(directions, dtype=np.float64)


def check_dicom_stack(folder: Path, files: Sequence[Path], slice_spacing: float, num_slices: int) -> None:
    """The series in ``files`` must be the regular stack the reader built: ``num_slices`` slices, one orientation,
    positions along the normal evenly spaced by ``slice_spacing`` (mm) with no gap and no duplicate."""
    if len(files) != num_slices:
        raise HeaderCheckError(f"{folder}: the series has {len(files)} files but {num_slices} slices were read")
    if len(files) < 2:
        return
    origins, directions = _slice_geometry(files)
    if np.abs(directions - directions[0]).max() > 1e-4:
        raise HeaderCheckError(f"{folder}: slices of the series have different orientations; not one volume")
    normal = directions[0].reshape(3, 3)[:, 2]
    z = np.sort(origins @ normal)
    steps = np.diff(z)
    tol = max(0.01, 0.01 * abs(slice_spacing))
    if np.any(steps < tol):
        i = int(np.argmin(steps))
        raise HeaderCheckError(f"{folder}: duplicated slice position {z[i]:.4g} mm along the slice normal")
    if np.abs(steps - abs(slice_spacing)).max() > tol:
        i = int(np.argmax(np.abs(steps - abs(slice_spacing))))
        raise HeaderCheckError(
            f"{folder}: slices are not evenly spaced: {steps[i]:.4g} mm between positions {z[i]:.4g} and "
            f"{z[i + 1]:.4g} mm, {abs(slice_spacing):.4g} mm elsewhere (a missing or extra slice); not predicted on a "
            "grid that would be wrong"
        )
    in_plane = origins - np.outer(origins @ normal, normal)
    if np.abs(in_plane - in_plane[0]).max() > tol:
        raise HeaderCheckError(f"{folder}: slice origins do not lie on one line along the normal (a tilted stack)")
