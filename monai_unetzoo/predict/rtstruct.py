"""RT-STRUCT output (rt-utils): one ROI per label, planar contours of the label map in patient coordinates (mm, LPS)
on the source slices, for radiotherapy planning systems that read structures rather than SEG.

rt-utils traces each slice's mask with OpenCV and maps the pixel-centre contour points through the slices'
ImagePositionPatient/ImageOrientationPatient/PixelSpacing; regions with holes are cut open ("pin hole") so that
every region is one contour, which any reader fills the same way."""

from __future__ import annotations

import numpy as np

from .bundle import PredictionBundle
from .dicom_seg import segment_specs

__all__ = ["build_rtstruct"]


def _ascending_along_normal(source_datasets: list) -> bool:
    iop = np.asarray([float(v) for v in source_datasets[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    first, last = (float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])) for ds in (source_datasets[0], source_datasets[-1]))
    return last >= first


def _spacing_swapped(source_datasets: list) -> list:
    """Header copies with ``PixelSpacing`` reversed, for rt-utils (1.2.7), whose pixel-to-patient matrix scales the
    row direction (the column index) by ``PixelSpacing[0]`` -- the spacing between rows. The standard pairs the
    row direction with ``PixelSpacing[1]``; with the values swapped its matrix is right for non-square pixels too
    (and unchanged for square ones). Only geometry is read from these copies; UIDs and patient data are the same."""
    import copy

    out = []
    for ds in source_datasets:
        c = copy.deepcopy(ds)  # headers only (read without pixel data)
        c.PixelSpacing = [ds.PixelSpacing[1], ds.PixelSpacing[0]]
        out.append(c)
    return out


def build_rtstruct(labels: np.ndarray, source_datasets: list, bundle: PredictionBundle, software_version: str):
    """An RT Structure Set (pydicom ``Dataset``) of ``labels`` (``(x, y, z)``, ``source_datasets[k]`` = slice
    ``k``), one ROI per foreground label named as the bundle's segments."""
    from rt_utils import ds_helper
    from rt_utils.rtstruct import RTStruct

    datasets, mask = _spacing_swapped(source_datasets), np.transpose(labels, (1, 0, 2))  # (rows, columns, slice)
    if not _ascending_along_normal(datasets):  # rt-utils indexes slices in ascending position along the normal
        datasets, mask = datasets[::-1], mask[:, :, ::-1]
    rt = RTStruct(datasets, ds_helper.create_rtstruct_dataset(datasets))
    _, specs = segment_specs(bundle)
    for value, spec in specs.items():
        roi = mask == value
        if roi.any():
            rt.add_roi(mask=roi, name=str(spec["label"])[:64], color=list(spec["color"]), use_pin_hole=True,
                       description=f"{bundle.name} {bundle.version}", roi_generation_algorithm="AUTOMATIC")
    ds = rt.ds
    ds.SeriesDescription = f"{bundle.name} structures"[:64]
    ds.Manufacturer, ds.ManufacturerModelName = "monai-unetzoo", bundle.name[:64]
    ds.SoftwareVersions = str(software_version)
    ds.StructureSetLabel = "UNETZOO"
    return ds
