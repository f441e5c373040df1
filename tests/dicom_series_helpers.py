"""Test helpers: DICOM series written with pydicom alone (independent of the code under test).

``write_image_series`` writes one CT/MR Image Storage file per k-slice of a volume given in ITK index order
``(x, y, z)`` (``x`` along the row direction of ImageOrientationPatient, ``y`` down the columns, ``z`` along the
slice normal), with the LPS geometry ``origin`` (of voxel (0, 0, 0)), ``spacing`` ``(sx, sy, sz)`` and
``direction`` (3x3, columns = the x, y, z axes), i.e. what GDCM/ITK read back as that image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SOP_CLASS = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}


def lps_to_ras_affine(origin, spacing, direction) -> np.ndarray:
    """The RAS voxel-to-world affine MONAI gives the same image."""
    a = np.eye(4)
    a[:3, :3] = np.asarray(direction, float).reshape(3, 3) @ np.diag(spacing)
    a[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ a


def write_image_series(folder: Path, volume: np.ndarray, origin, spacing, direction, *, modality: str = "MR",
                       study_uid: str | None = None, series_uid: str | None = None, patient_id: str = "UZ-TEST-1",
                       series_number: int = 1, skip_slices: tuple[int, ...] = (), prefix: str = "IM") -> dict:
    """Write ``volume`` (int16, ``(x, y, z)``) as a series; returns its UIDs and the list of files written."""
    folder.mkdir(parents=True, exist_ok=True)
    d = np.asarray(direction, float).reshape(3, 3)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    files = []
    for k in range(volume.shape[2]):
        if k in skip_slices:
            continue
        position = np.asarray(origin, float) + d[:, 2] * spacing[2] * k
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = SOP_CLASS[modality]
        ds.SOPClassUID = SOP_CLASS[modality]
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Unetzoo", patient_id, "19700101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate, ds.StudyTime, ds.SeriesDate, ds.SeriesTime = "20240101", "120000", "20240101", "120000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "A1", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, series_number, k + 1
        ds.Manufacturer, ds.PositionReferenceIndicator = "unetzoo-tests", ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*d[:, 0], *d[:, 1])]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]  # row spacing (along y), column spacing (x)
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[0])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
        if modality == "CT":
            ds.KVP = "120"
        ds.PixelData = np.ascontiguousarray(volume[:, :, k].T.astype("<i2")).tobytes()
        path = folder / f"{prefix}{k:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        files.append(path)
    return {"study_uid": study_uid, "series_uid": series_uid, "frame_uid": frame_uid, "files": files}
