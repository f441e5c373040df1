"""Reading scans through MONAI's readers and writing results back on the scan's exact grid, atomically.

Reading (``load_scan``) goes through :class:`monai.transforms.LoadImage` with the reader MONAI's own
auto-selection would pick for the file (so a bundle trained with a default ``LoadImaged`` sees the same arrays and
affines at prediction time):

============================  ===============================  ==============================================
input                         MONAI reader                     output written by ``write_scan_like``
============================  ===============================  ==============================================
``.nii``, ``.nii.gz``         ``NibabelReader``                same suffix, the input's own NIfTI header
``.nrrd``/``.nhdr``           ``ITKReader``                    ``.nrrd`` (SimpleITK, input's origin/spacing/
``.mha``/``.mhd``                                              direction); ``.mhd`` -> ``.mha`` (one file, so
                                                               that the write can be atomic)
DICOM series (a folder)       ``ITKReader`` (GDCM series)      ``.nii.gz`` (SimpleITK, the series' geometry)
``.tif``/``.tiff`` (2D/stack) ``ITKReader``                    same suffix (tifffile, resolution tags copied)
``.png .jpg .jpeg .bmp .gif`` ``PILReader``                    ``.png`` (lossless; never JPEG for labels)
============================  ===============================  ==============================================

Axis conventions (MONAI's defaults, kept on purpose): the loaded array is channel-first ``(C, *spatial)`` with the
spatial axes in the file's index order (NIfTI ``i, j, k``; ITK ``x, y, z`` index; images ``(W, H)``), and
``MetaTensor.affine`` maps voxel indices to RAS millimetres (ITK's LPS is converted with ``affine_lps_to_ras``).
``load_scan`` cross-checks that affine against the geometry read independently from the file header (nibabel or
SimpleITK) so that writing with the header's geometry is guaranteed to put the result on the same grid.

Writing (``write_scan_like``) does not go through MONAI's writers on purpose: ``NibabelWriter``/``ITKWriter``
rebuild the header from an affine (resetting the NIfTI qform/sform codes and converting RAS back to LPS), while
copying the input's own header (NIfTI) or origin/spacing/direction (ITK) reproduces the input grid bit for bit.
Every output is written to ``<stem>.tmp-<pid>-<token><suffix>`` in the destination folder, fsynced and then
renamed over the final name (``os.replace`` is atomic on POSIX and Windows), so an interrupted run never leaves a
truncated file under the final name.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

__all__ = [
    "ScanReadError",
    "ScanGrid",
    "SCAN_SUFFIXES",
    "scan_family",
    "split_scan_suffix",
    "is_dicom_file",
    "load_scan",
    "write_scan_like",
    "scan_output_suffix",
    "atomic_output_path",
    "remove_stale_temporaries",
    "quiet_optional_reader_warnings",
    "tiff_pixel_size_mm",
    "dicom_series_in_folder",
]

# suffix -> format family
SCAN_SUFFIXES: dict[str, str] = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "itk",
    ".nhdr": "itk",
    ".mha": "itk",
    ".mhd": "itk",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".png": "raster",
    ".jpg": "raster",
    ".jpeg": "raster",
    ".bmp": "raster",
    ".gif": "raster",
    ".dcm": "dicom",
    ".ima": "dicom",
    ".dicom": "dicom",
}
FAMILY_NAMES = {
    "nifti": "NIfTI",
    "itk": "ITK image (NRRD/MetaImage)",
    "tiff": "TIFF",
    "raster": "PNG/JPEG/GIF/BMP image",
    "dicom": "DICOM series",
}
_TEMP_TAG = ".tmp-"


class ScanReadError(ValueError):
    """A scan that cannot be used: the message names the file and the problem."""


def split_scan_suffix(name: str) -> tuple[str, str]:
    """``"case.nii.gz" -> ("case", ".nii.gz")``; the suffix is lower-case, ``""`` when there is none."""
    lower = name.lower()
    for suffix in sorted(SCAN_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    stem, dot, ext = name.rpartition(".")
    if dot and stem:
        return stem, "." + ext.lower()
    return name, ""


def is_dicom_file(path: Path) -> bool:
    """A DICOM part-10 file: ``.dcm``/``.ima``/``.dicom`` suffix, or the ``DICM`` magic at byte 128."""
    _, suffix = split_scan_suffix(path.name)
    if SCAN_SUFFIXES.get(suffix) == "dicom":
        return True
    if path.name.upper() == "DICOMDIR":
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def scan_family(path: Path) -> str | None:
    """Format family of ``path`` (``"nifti" | "itk" | "tiff" | "raster" | "dicom"``), ``None`` if unsupported."""
    if path.is_dir():
        return "dicom"
    _, suffix = split_scan_suffix(path.name)
    family = SCAN_SUFFIXES.get(suffix)
    if family is None and is_dicom_file(path):
        return "dicom"
    return family


@dataclass
class ScanGrid:
    """Where a loaded scan lives: everything needed to write a result on exactly its grid.

    ``spatial_shape`` and ``affine`` (``(D+1, D+1)`` voxel index -> RAS mm, float64) describe the array as loaded
    (``(C, *spatial_shape)``); ``spacing`` are the affine's column norms. ``physical`` says whether the spacing is a
    real size in mm (false for PNG/JPEG/GIF and TIFF without resolution tags, whose "spacing" is 1 pixel).
    """

    family: str
    source: Path
    spatial_shape: tuple[int, ...]
    affine: np.ndarray
    physical: bool
    input_suffix: str = ""
    series_uid: str | None = None
    num_channels: int = 1
    axes_reversed: bool = False  # loaded spatial axes are the file's in reverse (PILReader(reverse_indexing=False))
    reader_name: str = ""
    nifti_image: Any = None  # nibabel image (header + affine, data never loaded) of a NIfTI input
    itk_geometry: tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]] | None = None  # LPS origin/spacing/direction
    tiff_resolution: dict[str, Any] = field(default_factory=dict)

    @property
    def spatial_dims(self) -> int:
        return len(self.spatial_shape)

    @property
    def spacing(self) -> tuple[float, ...]:
        d = self.spatial_dims
        return tuple(float(v) for v in np.linalg.norm(self.affine[:d, :d], axis=0))

    @property
    def voxel_volume(self) -> float:
        """Volume (3D, mm^3) or area (2D, mm^2) of one voxel: ``|det|`` of the affine's linear part (oblique-safe)."""
        d = self.spatial_dims
        return float(abs(np.linalg.det(self.affine[:d, :d])))


def _short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    # ITK/SimpleITK messages start with a source location line; the useful line is usually the last one
    msg = next((line.strip() for line in reversed(text) if line.strip()), "") if text else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _lps_to_ras_affine(origin, spacing, direction) -> np.ndarray:
    d = len(origin)
    affine = np.eye(d + 1)
    affine[:d, :d] = np.asarray(direction, dtype=np.float64).reshape(d, d) @ np.diag(spacing)
    affine[:d, d] = origin
    flip = np.diag([-1.0, -1.0] + [1.0] * (d - 2) + [1.0]) if d >= 2 else np.eye(d + 1)
    return flip @ affine


def _ras_affine_to_lps_geometry(affine: np.ndarray):
    d = affine.shape[0] - 1
    flip = np.diag([-1.0, -1.0] + [1.0] * (d - 2) + [1.0])
    lps = flip @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:d, :d], axis=0)
    direction = lps[:d, :d] / spacing
    return tuple(lps[:d, d].tolist()), tuple(spacing.tolist()), tuple(direction.flatten().tolist())


def _itk_header_geometry(path: Path):
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader.GetOrigin(), reader.GetSpacing(), reader.GetDirection(), reader.GetSize()


#: Pixel sizes outside this range (mm) are not taken as physical: a resolution tag of e.g. 1e9 dpi or 1 dpi is a
#: placeholder written by the capturing software, not a measurement.
TIFF_PLAUSIBLE_PIXEL_MM = (1e-4, 100.0)
_TIFF_UNIT_MM = {2: 25.4, 3: 10.0}  # ResolutionUnit 2 = inch, 3 = centimetre (1 = none)


def _rational(value: Any) -> float | None:
    """A TIFF RATIONAL tag value ``(numerator, denominator)`` (or a plain number) as a float; None when it is not a
    positive finite number (``0/1``, ``n/0``)."""
    num, den = value if isinstance(value, tuple) else (value, 1)
    try:
        v = float(num) / float(den) if float(den) != 0 else float("nan")
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


def tiff_pixel_size_mm(xres: Any, yres: Any, unit: int | None) -> tuple[float, float] | None:
    """``(x, y)`` pixel size in mm from TIFF ``XResolution``/``YResolution`` (pixels per unit) and
    ``ResolutionUnit`` (TIFF default: inch), or None when the tags give no physical size: unit "none", zero or
    missing resolutions (DRIVE's photographs carry ``0/1``), or a size outside :data:`TIFF_PLAUSIBLE_PIXEL_MM`."""
    mm_per_unit = _TIFF_UNIT_MM.get(2 if unit is None else int(unit))
    x, y = _rational(xres), _rational(yres)
    if mm_per_unit is None or x is None or y is None:
        return None
    size = (mm_per_unit / x, mm_per_unit / y)
    lo, hi = TIFF_PLAUSIBLE_PIXEL_MM
    return size if all(lo <= s <= hi for s in size) else None


def _tiff_resolution(path: Path) -> tuple[dict[str, Any], tuple[float, float] | None]:
    """Resolution tags of the first page (to copy into outputs) and the ``(x, y)`` pixel size in mm they give, or
    None (see :func:`tiff_pixel_size_mm`)."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            tags = tif.pages[0].tags
            xres, yres, unit = tags.get("XResolution"), tags.get("YResolution"), tags.get("ResolutionUnit")
            if xres is None or yres is None:
                return {}, None
            unit_value = int(unit.value) if unit is not None else 2  # TIFF default unit is the inch
            info = {"resolution": (xres.value, yres.value), "resolutionunit": unit_value}
            return info, tiff_pixel_size_mm(xres.value, yres.value, unit_value)
    except Exception:  # resolution is a nicety; the image itself was readable
        return {}, None


def dicom_series_in_folder(folder: Path) -> list[tuple[str, list[Path]]]:
    """``(series identifier, files)`` per DICOM series directly in ``folder``, grouped exactly as MONAI's
    ``ITKReader`` groups them (ITK's GDCMSeriesFileNames with series details and the series-date restriction), so
    that each identifier can be handed to ``ITKReader(series_name=...)``; files in the reader's slice order."""
    import itk

    names = itk.GDCMSeriesFileNames.New()
    names.SetUseSeriesDetails(True)
    names.AddSeriesRestriction("0008|0021")  # Series Date, as monai.data.ITKReader
    names.SetDirectory(str(folder))
    return [(uid, [Path(n) for n in names.GetFileNames(uid)]) for uid in sorted(str(u) for u in names.GetSeriesUIDs())]


def _check_header_before_reading(path: Path, family: str) -> None:
    from .header_checks import HeaderCheckError, check_declared_size

    try:
        check_declared_size(path, family)
    except HeaderCheckError as exc:
        raise ScanReadError(str(exc)) from exc
    except Exception:  # a header the checks cannot parse: the reader below reports it with its own words
        pass


def _check_grid_after_reading(image: Any, grid: ScanGrid) -> None:
    """NIfTI units to mm (for the network only: outputs keep the input's header), valid voxel sizes, and a
    regular DICOM stack; see :mod:`monai_unetzoo.header_checks`."""
    from .header_checks import (
        HeaderCheckError,
        check_dicom_stack,
        check_nifti_pixdim,
        check_voxel_sizes,
        nifti_unit_scale,
    )

    try:
        if grid.family == "nifti":
            check_nifti_pixdim(grid.nifti_image, grid.source)
            scale = nifti_unit_scale(grid.nifti_image)
            if scale != 1.0:
                d = grid.spatial_dims
                grid.affine = grid.affine.copy()
                grid.affine[:d, :] *= scale
                image.affine = torch.as_tensor(grid.affine)
        if grid.physical:
            check_voxel_sizes(grid.affine, grid.source)
        if grid.family == "dicom" and grid.spatial_dims == 3:
            series = dict(dicom_series_in_folder(grid.source))
            files = series.get(grid.series_uid) if grid.series_uid else next(iter(series.values()), None)
            if files is not None:
                check_dicom_stack(grid.source, files, grid.spacing[2], grid.spatial_shape[2])
    except HeaderCheckError as exc:
        raise ScanReadError(str(exc)) from exc


def _make_reader(family: str, series_uid: str | None):
    from monai.data import ITKReader, NibabelReader, PILReader

    if family == "nifti":
        return NibabelReader()
    if family == "raster":
        return PILReader()
    if family == "dicom":
        return ITKReader(series_name=series_uid or "")
    return ITKReader()


_LOADER_CACHE: dict[str, Any] = {}


@contextlib.contextmanager
def quiet_optional_reader_warnings() -> Iterator[None]:
    """Silence the warning MONAI logs whenever its nvImageCodec DICOM reader is instantiated without nvImageCodec
    (every ``LoadImage``/``LoadImaged`` construction does that); it concerns an optional GPU decoder we do not use."""
    import logging
    import warnings

    plugin_logger = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = plugin_logger.level
    plugin_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
            yield
    finally:
        plugin_logger.setLevel(level)


def _shared_loader() -> Any:
    """One ``LoadImage`` per process, called with an explicit reader per file.

    ``LoadImage.__init__`` instantiates every default reader (see :func:`quiet_optional_reader_warnings`), so it is
    built once.
    """
    if "loader" not in _LOADER_CACHE:
        from monai.transforms import LoadImage

        with quiet_optional_reader_warnings():
            _LOADER_CACHE["loader"] = LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)
    return _LOADER_CACHE["loader"]


def _single_page_tiff(path: Path) -> bool:
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            return len(tif.pages) == 1
    except Exception:
        return False


def load_scan(
    source: str | os.PathLike, *, series_uid: str | None = None, raster_reader: Any = None
) -> tuple[torch.Tensor, ScanGrid]:
    """Read one scan (a file, or a folder holding a DICOM series) as a channel-first float32 MetaTensor.

    Args:
        source: the file, or the folder of a DICOM series.
        series_uid: the series to read when the folder holds several (an ITK/GDCM series identifier).
        raster_reader: a ``PILReader`` (with its options) to use for PNG/JPEG/GIF/BMP and single-page TIFF files
            instead of the default readers, e.g. the one a bundle was trained with. With
            ``reverse_indexing=False`` the spatial axes come as ``(H, W)`` and ``grid.axes_reversed`` is set, so
            that :func:`write_scan_like` still writes results in the file's layout.

    Returns ``(image, grid)``: ``image`` of shape ``(C, *spatial)`` (a MONAI ``MetaTensor`` whose ``affine`` is
    ``grid.affine``) and the :class:`ScanGrid` to write results with. Raises :class:`ScanReadError` naming the
    file and the problem when the file is missing, empty, unreadable, or holds NaN/Inf.
    """
    path = Path(source)
    family = "dicom" if series_uid is not None else scan_family(path)
    if not path.exists():
        raise ScanReadError(f"{path}: file not found")
    if family is None:
        raise ScanReadError(f"{path}: unsupported file type (supported: {', '.join(sorted(SCAN_SUFFIXES))}, DICOM)")
    if path.is_file() and path.stat().st_size == 0:
        raise ScanReadError(f"{path}: file is empty (0 bytes)")
    if family == "dicom" and path.is_file():
        path = path.parent
    _, suffix = split_scan_suffix(path.name) if family != "dicom" else ("", "")
    reader = _make_reader(family, series_uid)
    if raster_reader is not None and (family == "raster" or (family == "tiff" and _single_page_tiff(path))):
        reader = raster_reader
    axes_reversed = type(reader).__name__ == "PILReader" and not getattr(reader, "reverse_indexing", True)
    if family in ("nifti", "itk"):
        _check_header_before_reading(path, family)
    try:
        image = _shared_loader()(str(path), reader=reader)
    except Exception as exc:
        raise ScanReadError(f"{path}: cannot be read as {FAMILY_NAMES[family]} ({_short_error(exc)})") from exc
    spatial_shape = tuple(int(s) for s in image.shape[1:])
    if len(spatial_shape) == 0 or min(spatial_shape) == 0:
        raise ScanReadError(f"{path}: image has no voxels (shape {tuple(image.shape)})")
    n_bad = int((~torch.isfinite(image)).sum())
    if n_bad:
        raise ScanReadError(f"{path}: {n_bad} of {image.numel()} values are NaN or infinite")
    affine = np.asarray(image.affine, dtype=np.float64)
    d = len(spatial_shape)
    if affine.shape != (d + 1, d + 1):  # e.g. PILReader leaves MONAI's default 4x4 identity on a 2D image
        fixed = np.eye(d + 1)
        k = min(d, affine.shape[0] - 1)
        fixed[:k, :k] = affine[:k, :k]
        fixed[:k, d] = affine[:k, -1]
        affine = fixed
        image.affine = torch.as_tensor(affine)
    grid = ScanGrid(
        family=family,
        source=path,
        spatial_shape=spatial_shape,
        affine=affine,
        physical=family in ("nifti", "itk", "dicom"),
        input_suffix=suffix,
        series_uid=series_uid,
        num_channels=int(image.shape[0]),
        axes_reversed=axes_reversed,
        reader_name=type(reader).__name__,
    )
    try:
        _attach_header_geometry(grid)
    except ScanReadError:
        raise
    except Exception as exc:
        raise ScanReadError(f"{path}: cannot read the header geometry ({_short_error(exc)})") from exc
    _check_grid_after_reading(image, grid)
    return image, grid


def _attach_header_geometry(grid: ScanGrid) -> None:
    """Read the grid from the file header independently of MONAI and check that both agree."""
    path, d = grid.source, grid.spatial_dims
    header_affine = None
    if grid.family == "nifti":
        import nibabel as nib

        img = nib.load(str(path))
        grid.nifti_image = img
        header_affine = np.asarray(img.affine, dtype=np.float64)
        if d < 3:  # a 2D NIfTI: MONAI keeps the in-plane part of the affine
            header_affine = np.delete(np.delete(header_affine, range(d, 3), 0), range(d, 3), 1)
    elif grid.family == "tiff" and grid.reader_name == "PILReader":  # PIL knows no geometry: resolution tags
        grid.tiff_resolution, pixel_mm = _tiff_resolution(path)
        grid.physical = pixel_mm is not None
        if pixel_mm is not None and d == 2:
            grid.affine = np.diag(list(pixel_mm[:: -1 if grid.axes_reversed else 1]) + [1.0])
    elif grid.family in ("itk", "tiff"):
        origin, spacing, direction, size = _itk_header_geometry(path)
        if tuple(int(s) for s in size) != grid.spatial_shape:
            raise ScanReadError(f"{path}: header size {tuple(size)} differs from the loaded shape {grid.spatial_shape}")
        grid.itk_geometry = (tuple(origin), tuple(spacing), tuple(direction))
        header_affine = _lps_to_ras_affine(origin, spacing, direction)
        if grid.family == "tiff":
            grid.tiff_resolution, pixel_mm = _tiff_resolution(path)
            grid.physical = pixel_mm is not None and d == 2  # a stack's slice distance is not stored in TIFF tags
    elif grid.family == "dicom":
        grid.itk_geometry = _ras_affine_to_lps_geometry(grid.affine)
    if header_affine is not None:
        scale = max(1.0, float(np.abs(header_affine).max()))
        if header_affine.shape != grid.affine.shape or not np.allclose(header_affine, grid.affine, atol=1e-4 * scale):
            raise ScanReadError(
                f"{path}: the geometry MONAI read ({grid.affine.tolist()}) differs from the file header "
                f"({header_affine.tolist()}); refusing to write results on a possibly different grid"
            )


def scan_output_suffix(grid_or_family: ScanGrid | str, input_suffix: str = "", kind: str = "label") -> str:
    """Suffix of a result written for a scan: pass its :class:`ScanGrid`, or its family and input suffix (so that
    output names are known before reading). ``kind`` is ``"label"`` or ``"prob"`` (probability maps)."""
    if isinstance(grid_or_family, ScanGrid):
        family, input_suffix = grid_or_family.family, grid_or_family.input_suffix
    else:
        family = grid_or_family
    if family == "nifti":
        return input_suffix
    if family == "itk":
        return {".nhdr": ".nrrd", ".mhd": ".mha"}.get(input_suffix, input_suffix)
    if family == "dicom":
        return ".nii.gz"
    if family == "tiff":
        return input_suffix
    return ".png" if kind == "label" else ".tif"  # raster: PNG is lossless; float probabilities need TIFF


def _fit_to_grid(data: np.ndarray, grid: ScanGrid, channels: bool) -> np.ndarray:
    """Reshape ``data`` to the grid's spatial shape when they differ only by singleton axes (2D model on an
    ``(X, Y, 1)`` volume)."""
    spatial = data.shape[1:] if channels else data.shape
    if tuple(spatial) == grid.spatial_shape:
        return data
    if int(np.prod(spatial)) != int(np.prod(grid.spatial_shape)) or [s for s in spatial if s != 1] != [
        s for s in grid.spatial_shape if s != 1
    ]:
        raise ValueError(f"result of shape {tuple(spatial)} does not fit the grid {grid.spatial_shape} of {grid.source}")
    return data.reshape(((data.shape[0],) if channels else ()) + grid.spatial_shape)


def write_scan_like(data: np.ndarray | torch.Tensor, grid: ScanGrid, path: str | os.PathLike, kind: str = "label") -> Path:
    """Write ``data`` on exactly ``grid`` to ``path``, atomically (temporary file, fsync, rename).

    Args:
        data: ``kind="label"``: integer labels of shape ``grid.spatial_shape``; ``kind="prob"``: float
            probabilities of shape ``(C, *grid.spatial_shape)`` (stored as the 4th NIfTI dimension, an ITK vector
            image, or TIFF pages).
        grid: the grid of the input, from :func:`load_scan`.
        path: final file name; its suffix should be :func:`scan_output_suffix` of the grid.
    """
    if kind not in ("label", "prob"):
        raise ValueError(f"kind must be 'label' or 'prob', got {kind!r}")
    arr = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    channels = kind == "prob"
    arr = _fit_to_grid(arr, grid, channels)
    if grid.axes_reversed:  # back to MONAI's default (file index) order, which the writers below expect
        arr = arr.transpose([0] + list(range(arr.ndim - 1, 0, -1))) if channels else arr.transpose()
    if kind == "label":
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError("label values must lie in [0, 65535]")
        arr = arr.astype(np.uint8 if (arr.size == 0 or arr.max() < 256) else np.uint16)
    else:
        arr = arr.astype(np.float32)
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output_path(final) as tmp:
        if grid.family == "nifti":
            _write_nifti(arr, grid, tmp, channels)
        elif grid.family in ("itk", "dicom"):
            _write_itk(arr, grid, tmp, channels)
        elif grid.family == "tiff" or (grid.family == "raster" and channels):
            _write_tiff(arr, grid, tmp, channels)
        else:
            _write_raster(arr, tmp)
    return final


def _write_nifti(arr: np.ndarray, grid: ScanGrid, tmp: Path, channels: bool) -> None:
    src = grid.nifti_image
    header = src.header.copy()
    data = np.moveaxis(arr, 0, -1) if channels else arr  # NIfTI keeps channels/components after x, y, z
    if channels and arr.ndim - 1 < 3:  # 2D probabilities: keep 3 spatial dims, channels in the 4th
        data = data.reshape(grid.spatial_shape + (1,) * (3 - grid.spatial_dims) + (arr.shape[0],))
    header.set_data_dtype(data.dtype)
    header["descrip"] = b"monai-unetzoo " + (b"probabilities" if channels else b"labels")
    if hasattr(header, "set_intent"):
        header.set_intent("none")
    # affine = the header's own best affine, so nibabel keeps qform/sform (matrices and codes) untouched
    out = type(src)(data, src.affine, header)
    out.set_data_dtype(data.dtype)
    out.to_filename(str(tmp))


def _write_itk(arr: np.ndarray, grid: ScanGrid, tmp: Path, channels: bool) -> None:
    import SimpleITK as sitk

    if channels:  # (C, x, y, z) -> (z, y, x, C) vector image
        order = list(range(arr.ndim - 1, 0, -1)) + [0]
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(order)), isVector=True)
    else:  # (x, y, z) -> SimpleITK's (z, y, x) array order
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose()))
    origin, spacing, direction = grid.itk_geometry
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    sitk.WriteImage(img, str(tmp), useCompression=True)


def _write_tiff(arr: np.ndarray, grid: ScanGrid, tmp: Path, channels: bool) -> None:
    import tifffile

    if channels:  # (C, x, y[, z]) -> (C, [z,] y, x)
        data = np.ascontiguousarray(arr.transpose([0] + list(range(arr.ndim - 1, 0, -1))))
    else:  # (x, y[, z]) -> ([z,] y, x)
        data = np.ascontiguousarray(arr.transpose())
    kwargs = dict(grid.tiff_resolution) if grid.family == "tiff" else {}
    tifffile.imwrite(str(tmp), data, photometric="minisblack", **kwargs)


def _write_raster(arr: np.ndarray, tmp: Path) -> None:
    from PIL import Image

    data = np.ascontiguousarray(arr.transpose())  # PILReader's (W, H) back to PIL's (H, W)
    mode = "L" if data.dtype == np.uint8 else "I;16"
    Image.fromarray(data, mode=mode).save(str(tmp), format="PNG")


def _fsync(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; on success fsync and rename it to ``final``, else delete it.

    The temporary name keeps the final suffix (``case.tmp-1234-a1b2c3.nii.gz``) because nibabel, SimpleITK and
    PIL choose the file format from the suffix.
    """
    final = Path(final)
    stem, suffix = split_scan_suffix(final.name)
    tmp = final.with_name(f"{stem}{_TEMP_TAG}{os.getpid()}-{secrets.token_hex(3)}{suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"writer produced no file for {final}")
        _fsync(tmp)
        os.replace(tmp, final)
        _fsync(final.parent)
    finally:
        with contextlib.suppress(OSError):
            if tmp.exists():
                tmp.unlink()


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own temporaries of this file are never in use when we clean up before writing it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_stale_temporaries(final: str | os.PathLike) -> list[Path]:
    """Delete temporaries of ``final`` left by a killed run (``<stem>.tmp-<pid>-<token><suffix>``); return what was
    removed. A temporary whose writing process is still alive is left alone (it is another run's file in progress)."""
    final = Path(final)
    stem, suffix = split_scan_suffix(final.name)
    removed = []
    for p in final.parent.glob(f"{glob.escape(stem)}{_TEMP_TAG}*{glob.escape(suffix)}"):
        owner = p.name[len(stem) + len(_TEMP_TAG):].split("-", 1)[0]
        if owner.isdigit() and _process_alive(int(owner)):
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed
