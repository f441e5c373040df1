"""DICOM SEG output (highdicom): a label map on a DICOM series' own grid as a Segmentation object that references
the series, one segment per label with the bundle's codes.

Why these choices: a BINARY segmentation (one bit per pixel, one frame per source slice and segment, empty frames
left out) is the kind every viewer and PACS reads (3D Slicer, OHIF, dcmqi); the 2024 LABELMAP type is not read
by most of them yet. The segment descriptions come from the bundle's ``metadata.json``, key ``dicom_seg``::

    "dicom_seg": {
      "algorithm_family": {"value": "123110", "scheme": "DCM", "meaning": "Artificial Intelligence"},
      "segments": {
        "1": {"label": "anterior hippocampus",
              "category": {"value": "91723000", "scheme": "SCT", "meaning": "Anatomical Structure"},
              "type": {"value": "5366008", "scheme": "SCT", "meaning": "Hippocampus"},
              "type_modifier": {"value": "255549009", "scheme": "SCT", "meaning": "Anterior"},
              "anatomic_region": {...}, "color": [r, g, b]}}}

(keys = label values). Labels without an entry get the generic SNOMED CT code "Tissue" and their
``channel_def`` name. Every segment names the algorithm (the bundle's name and version, the checkpoint's SHA-256
as its parameter): that is how a later run recognises its own SEG in a PACS (:func:`seg_made_by`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import BundleConfigError, PredictionBundle

__all__ = ["segment_specs", "segment_descriptions", "build_dicom_seg", "seg_made_by", "seg_label_map",
           "CHECKPOINT_PARAMETER"]

CHECKPOINT_PARAMETER = "checkpoint_sha256"
_GENERIC = {"value": "85756007", "scheme": "SCT", "meaning": "Tissue"}
_AI = {"value": "123110", "scheme": "DCM", "meaning": "Artificial Intelligence"}
_COLORS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def _metadata(bundle: PredictionBundle) -> dict[str, Any]:
    path = Path(bundle.root) / "metadata.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def segment_specs(bundle: PredictionBundle) -> tuple[dict[str, str], dict[int, dict[str, Any]]]:
    """``(algorithm family code, {label value: segment spec})`` for every foreground label of ``bundle``, from its
    metadata's ``dicom_seg`` (see the module docstring) with generic codes where it says nothing."""
    declared = _metadata(bundle).get("dicom_seg", {}) or {}
    segments = declared.get("segments", {}) or {}
    specs = {}
    for i, (value, name) in enumerate(sorted(bundle.label_names.items())):
        spec = dict(segments.get(str(value), {}))
        spec.setdefault("label", name)
        spec.setdefault("category", _GENERIC)
        spec.setdefault("type", _GENERIC)
        spec.setdefault("color", list(_COLORS[i % len(_COLORS)]))
        specs[int(value)] = spec
    return dict(declared.get("algorithm_family", _AI)), specs


def _code(spec: dict[str, str]):
    from highdicom.sr import CodedConcept

    try:
        return CodedConcept(value=str(spec["value"]), scheme_designator=str(spec["scheme"]), meaning=str(spec["meaning"]))
    except KeyError as exc:
        raise BundleConfigError(f"metadata.json dicom_seg: a code lacks {exc} (needs value, scheme, meaning)") from None


def segment_descriptions(bundle: PredictionBundle) -> list:
    """highdicom ``SegmentDescription`` per foreground label (segment number = label value)."""
    import highdicom as hd
    from pydicom.sequence import Sequence as DicomSequence

    family, specs = segment_specs(bundle)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=bundle.name[:64], family=_code(family), version=str(bundle.version)[:64],
        source="monai-unetzoo", parameters={CHECKPOINT_PARAMETER: bundle.checkpoint_sha256},
    )
    out = []
    for value, spec in specs.items():
        desc = hd.seg.SegmentDescription(
            segment_number=value, segment_label=str(spec["label"])[:64],
            segmented_property_category=_code(spec["category"]), segmented_property_type=_code(spec["type"]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            anatomic_regions=[_code(spec["anatomic_region"])] if "anatomic_region" in spec else None,
            display_color=hd.color.CIELabColor.from_rgb(*spec["color"]) if hasattr(hd.color.CIELabColor, "from_rgb")
            else None,
        )
        if "type_modifier" in spec:  # highdicom has no argument for it; the attribute is standard (C.8.20.2)
            desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = DicomSequence(
                [_code(spec["type_modifier"])])
        out.append(desc)
    return out


def build_dicom_seg(labels: np.ndarray, source_datasets: list, bundle: PredictionBundle, software_version: str):
    """A highdicom ``Segmentation`` of ``labels`` (``(x, y, z)``, values = segment numbers) on the source slices
    ``source_datasets`` (``source_datasets[k]`` is slice ``k``, see
    :func:`~.dicom_series.datasets_in_grid_order`); frame ``k`` is ``labels[:, :, k].T`` (rows along y)."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    frames = np.ascontiguousarray(np.transpose(labels, (2, 1, 0))).astype(np.uint16 if labels.max(initial=0) > 255 else np.uint8)
    src = source_datasets[0]
    return hd.seg.Segmentation(
        source_images=source_datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(bundle),
        series_instance_uid=generate_uid(),
        series_number=int(src.get("SeriesNumber", 0) or 0) + 9000,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="monai-unetzoo",
        manufacturer_model_name=bundle.name[:64],
        software_versions=str(software_version),
        device_serial_number=bundle.checkpoint_sha256[:16] or "unknown",
        series_description=f"{bundle.name} segmentation"[:64],
        content_label="UNETZOO",
        content_description=f"{bundle.name} {bundle.version}"[:64],
        omit_empty_frames=bool(np.any(labels)),  # a SEG needs at least one frame
    )


def seg_made_by(ds, checkpoint_sha256: str) -> bool:
    """Whether the SEG dataset ``ds`` was written by this tool with the checkpoint of that SHA-256 (its segments'
    algorithm parameters, see :func:`segment_descriptions`)."""
    for seg in ds.get("SegmentSequence", []):
        for algo in seg.get("SegmentationAlgorithmIdentificationSequence", []):
            if f"{CHECKPOINT_PARAMETER}={checkpoint_sha256}" in str(algo.get("AlgorithmParameters", "")):
                return True
    return False


def seg_label_map(seg, source_datasets: list) -> np.ndarray:
    """The label map ``(x, y, z)`` of a BINARY SEG on its source slices (``source_datasets[k]`` = slice ``k``):
    each frame is placed by the source SOP Instance UID it references (what :func:`build_dicom_seg` writes)."""
    index = {str(ds.SOPInstanceUID): k for k, ds in enumerate(source_datasets)}
    rows, cols = int(source_datasets[0].Rows), int(source_datasets[0].Columns)
    labels = np.zeros((cols, rows, len(source_datasets)), dtype=np.uint16)
    pixels = seg.pixel_array.reshape(-1, rows, cols)
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        labels[:, :, index[uid]][pixels[f].T > 0] = number
    return labels.astype(np.uint8) if labels.max(initial=0) < 256 else labels
