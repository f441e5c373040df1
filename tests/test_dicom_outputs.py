"""The clinical round trip (issue 16): DICOM series in, DICOM SEG / RT-STRUCT out, a real PACS (Orthanc) in the loop.

Every DICOM series here is written with pydicom alone (``dicom_series_helpers``) from real data; every SEG the
tool writes is read back by an independent reader, dcmqi's ``segimage2itkimage``, whose volumes are placed on the
source grid by their own geometry; RT-STRUCT contours are read with pydicom and filled with PIL. Known outputs come
from the identity bundle of ``test_predict_cli`` (a label volume as input predicts itself).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from conftest import REQUIRE_DATA
from dicom_series_helpers import lps_to_ras_affine, write_image_series
from PIL import Image, ImageDraw
from test_predict_cli import make_bundle
from test_volume_io import ROT

REPO = Path(__file__).resolve().parents[1]
HIPPO_CASE = "hippocampus_004.nii.gz"
ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def run_predict(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "monai_unetzoo", "predict", "--quiet", *args], capture_output=True,
                          text=True, env=env, timeout=600)


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return {row["case"]: row for row in csv.DictReader(f)}


def hippocampus_labels(hippocampus_dir: Path) -> np.ndarray:
    return np.asarray(nib.load(hippocampus_dir / "labelsTr" / HIPPO_CASE).dataobj).astype(np.int16)


def dcmqi_read(seg_file: Path, work: Path, source_shape, origin, spacing, direction) -> tuple[np.ndarray, dict]:
    """dcmqi's reading of ``seg_file`` as a label map on the source grid (``(x, y, z)``), and its meta.json.

    dcmqi writes one volume per segment covering only the slices that hold frames; each is placed on the source
    lattice through its own origin, after checking that its spacing and direction are the source's."""
    exe = Path(sys.executable).parent / "segimage2itkimage"
    exe = str(exe) if exe.exists() else shutil.which("segimage2itkimage")
    assert exe, "dcmqi's segimage2itkimage is part of the test extra"
    work.mkdir(parents=True)
    done = subprocess.run([exe, "--inputDICOM", str(seg_file), "--outputDirectory", str(work), "-t", "nrrd"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    meta = json.loads((work / "meta.json").read_text())
    d = np.asarray(direction, float).reshape(3, 3)
    to_index = np.linalg.inv(d @ np.diag(spacing))
    labels = np.zeros(source_shape, np.uint8)
    for group in meta["segmentAttributes"]:
        for seg in group:
            img = sitk.ReadImage(str(work / f"{seg['labelID']}.nrrd"))
            np.testing.assert_allclose(img.GetSpacing(), spacing, rtol=1e-6)
            np.testing.assert_allclose(np.asarray(img.GetDirection()).reshape(3, 3), d, atol=1e-5)
            start = to_index @ (np.asarray(img.GetOrigin()) - np.asarray(origin))
            assert np.allclose(start, np.round(start), atol=1e-3), start  # on the source lattice
            i0 = np.round(start).astype(int)
            arr = sitk.GetArrayFromImage(img).transpose()  # (x, y, z)
            region = tuple(slice(a, a + n) for a, n in zip(i0, arr.shape))
            assert all(a >= 0 for a in i0) and all(r.stop <= s for r, s in zip(region, source_shape))
            labels[region][arr > 0] = seg["labelID"]
    return labels, meta


def seg_reference_checks(seg_file: Path, series: dict) -> pydicom.Dataset:
    """The SEG names the source study, series, frame of reference and every frame's source slice."""
    seg = pydicom.dcmread(seg_file)
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == series["study_uid"]
    assert seg.FrameOfReferenceUID == series["frame_uid"]
    assert [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence] == [series["series_uid"]]
    sources = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: pydicom.dcmread(f, stop_before_pixels=True)
               for f in series["files"]}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert uid in sources
        np.testing.assert_allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
                                   [float(v) for v in sources[uid].ImagePositionPatient], atol=1e-4)
    return seg


@pytest.mark.real_data
def test_hippocampus_series_to_seg_voxel_exact_by_dcmqi(hippocampus_dir, tmp_path):
    """A real hippocampus label volume as an oblique, anisotropic MR series -> ``auto``: NIfTI and SEG; dcmqi's
    reading of the SEG equals the NIfTI output voxel for voxel on the source grid (and both equal the labels)."""
    lab = hippocampus_labels(hippocampus_dir)
    origin, spacing = (10.0, -20.0, 30.0), (1.0, 0.5, 2.5)
    series = write_image_series(tmp_path / "in" / "mri", lab, origin, spacing, ROT)
    bundle = make_bundle(tmp_path / "bundle", preprocessing=[])
    done = run_predict("--bundle", str(bundle), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    row = read_rows(tmp_path / "out" / "summary.csv")["mri/"]
    nifti = nib.load(tmp_path / "out" / "mri_seg.nii.gz")
    np.testing.assert_allclose(nifti.affine, lps_to_ras_affine(origin, spacing, ROT), atol=1e-5)
    assert np.array_equal(np.asarray(nifti.dataobj), lab)
    seg_file = tmp_path / "out" / "mri_seg.dcm"
    assert row["dicom_output"] == str(seg_file)
    seg = seg_reference_checks(seg_file, series)
    assert row["sop_instance_uid"] == seg.SOPInstanceUID
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert prov["dicom_outputs"]["mri/"]["sop_instance_uid"] == seg.SOPInstanceUID
    labels, meta = dcmqi_read(seg_file, tmp_path / "dcmqi", lab.shape, origin, spacing, ROT)
    assert np.array_equal(labels, np.asarray(nifti.dataobj))
    names = {s["labelID"]: s["SegmentLabel"] for g in meta["segmentAttributes"] for s in g}
    assert names == {1: "anterior", 2: "posterior"}  # the bundle's channel_def
    # a second run: done (the NIfTI marks it), nothing rewritten
    mtime = seg_file.stat().st_mtime_ns
    again = run_predict("--bundle", str(bundle), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"))
    assert again.returncode == 0 and read_rows(tmp_path / "out" / "summary.csv")["mri/"]["status"] == "skipped"
    assert seg_file.stat().st_mtime_ns == mtime


@pytest.mark.real_data
def test_totalsegmentator_ct_series_to_seg(totalseg_dir, tmp_path):
    """The TotalSegmentator example CT as an LPS axial series with anisotropic spacing, through a bundle that
    maps HU to three classes (< -100, soft tissue, > 300 HU by rounding a scaled intensity): the NIfTI equals
    numpy's classification of the HU, and dcmqi's reading of the SEG equals the NIfTI."""
    ct = np.asarray(nib.load(totalseg_dir / "example_ct_sm.nii.gz").dataobj).astype(np.int16)
    # NIfTI RAS (i, j, k) -> DICOM LPS axial: x = R->L is i reversed, y = A->P is j reversed
    vol = np.ascontiguousarray(ct[::-1, ::-1, :])
    origin, spacing, direction = (-150.0, -120.0, -300.0), (0.8, 0.7, 3.0), np.eye(3)
    series = write_image_series(tmp_path / "in" / "ct", vol, origin, spacing, direction, modality="CT")
    bundle = make_bundle(tmp_path / "bundle", preprocessing=[
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -400.0, "a_max": 800.0, "b_min": 0.0,
         "b_max": 2.0, "clip": True}], roi_size=[64, 64, 16])
    done = run_predict("--bundle", str(bundle), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                       "--output-format", "dicom-seg", "--save-probabilities")
    assert done.returncode == 0, done.stderr
    row = read_rows(tmp_path / "out" / "summary.csv")["ct/"]
    assert row["status"] == "ok" and row["output"].endswith("ct_seg.dcm")
    assert not (tmp_path / "out" / "ct_seg.nii.gz").exists()  # dicom-seg: the SEG only
    expected = np.clip(np.round((vol.astype(np.float64) + 400.0) / 1200.0 * 2.0), 0, 2).astype(np.uint8)
    seg_file = tmp_path / "out" / "ct_seg.dcm"
    seg_reference_checks(seg_file, series)
    labels, _ = dcmqi_read(seg_file, tmp_path / "dcmqi", vol.shape, origin, spacing, direction)
    changed = labels != expected  # float32 rounding at the exact class boundaries may differ in a few voxels
    assert changed.mean() < 1e-4, changed.sum()
    assert int(row["anterior_voxels"]) == int((labels == 1).sum())


@pytest.mark.real_data
def test_real_hippocampus_bundle_declares_snomed_segments(hippocampus_dir, tmp_path):
    """bundles/hippocampus (untrained checkpoint) on a series of a real MRI: the SEG's segments carry the codes
    of its metadata.json (SNOMED CT Hippocampus, Anterior/Posterior) and name the algorithm and checkpoint."""
    from monai.bundle import ConfigParser

    from monai_unetzoo.predict.bundle import file_sha256

    bundle = REPO / "bundles" / "hippocampus"
    parser = ConfigParser()
    parser.read_config(str(bundle / "train.json"))
    parser["bundle_root"] = str(bundle)
    parser.get_parsed_content("imports")
    torch.manual_seed(0)
    ckpt = tmp_path / "model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), ckpt)
    img = np.asarray(nib.load(hippocampus_dir / "imagesTr" / HIPPO_CASE).dataobj)
    vol = np.round(img / img.max() * 1000).astype(np.int16)
    write_image_series(tmp_path / "in" / "t1", vol, (0.0, 0.0, 0.0), (1.0, 1.0, 1.2), ROT)
    done = run_predict("--bundle", str(bundle), "--checkpoint", str(ckpt), "--input", str(tmp_path / "in"),
                       "--output", str(tmp_path / "out"), "--output-format", "dicom-seg", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    seg = pydicom.dcmread(tmp_path / "out" / "t1_seg.dcm")
    meta = json.loads((bundle / "metadata.json").read_text())
    version = meta["version"]
    for item in seg.SegmentSequence:
        declared = meta["dicom_seg"]["segments"][str(item.SegmentNumber)]
        assert item.SegmentLabel == declared["label"]
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "5366008"  # SNOMED CT Hippocampus
        modifier = item.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0]
        assert modifier.CodeValue == {1: "255549009", 2: "255551008"}[item.SegmentNumber]  # Anterior, Posterior
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
        algo = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algo.AlgorithmName == meta["name"][:64] and algo.AlgorithmVersion == version
        assert file_sha256(ckpt) in algo.AlgorithmParameters


def rasterise_rtstruct(rt: pydicom.Dataset, roi_name: str, shape, origin, spacing, direction) -> np.ndarray:
    """Fill the planar contours of ``roi_name`` on the source grid (``(x, y, z)``): each contour's points to
    voxel indices, PIL polygon fill (outline included), even-odd rule between contours of one slice."""
    number = next(r.ROINumber for r in rt.StructureSetROISequence if r.ROIName == roi_name)
    contours = next(c for c in rt.ROIContourSequence if c.ReferencedROINumber == number)
    to_index = np.linalg.inv(np.asarray(direction, float).reshape(3, 3) @ np.diag(spacing))
    mask = np.zeros(shape, bool)
    for c in contours.ContourSequence:
        pts = (to_index @ (np.asarray(c.ContourData, float).reshape(-1, 3) - np.asarray(origin)).T).T
        k = int(round(pts[0, 2]))
        assert np.allclose(pts[:, 2], k, atol=1e-3)  # planar, on a source slice
        canvas = Image.new("1", (shape[0], shape[1]))  # PIL (width=x, height=y)
        xy = [(round(x), round(y)) for x, y in pts[:, :2]]  # PIL truncates floats: 15.9999 would be pixel 15
        draw = ImageDraw.Draw(canvas)
        draw.polygon(xy, fill=1, outline=1) if len(xy) > 2 else draw.line(xy + xy[:1], fill=1)  # 1-2 pixel regions
        mask[:, :, k] ^= np.asarray(canvas, bool).T
    return mask


@pytest.mark.real_data
def test_rtstruct_contours_agree_with_the_label_map(hippocampus_dir, tmp_path):
    """``--output-format rtstruct`` on the hippocampus series: contours read with pydicom and rasterised onto the
    source grid agree with the label map at Dice >= 0.95 per structure."""
    lab = hippocampus_labels(hippocampus_dir)
    origin, spacing = (-5.0, 12.0, 40.0), (0.9, 0.6, 2.0)
    series = write_image_series(tmp_path / "in" / "mri", lab, origin, spacing, ROT)
    bundle = make_bundle(tmp_path / "bundle", preprocessing=[])
    done = run_predict("--bundle", str(bundle), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                       "--output-format", "rtstruct")
    assert done.returncode == 0, done.stderr
    rt = pydicom.dcmread(tmp_path / "out" / "mri_rtstruct.dcm")
    assert rt.Modality == "RTSTRUCT" and rt.StudyInstanceUID == series["study_uid"]
    assert rt.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == series["frame_uid"]
    assert read_rows(tmp_path / "out" / "summary.csv")["mri/"]["sop_instance_uid"] == rt.SOPInstanceUID
    for value, name in ((1, "anterior"), (2, "posterior")):
        got = rasterise_rtstruct(rt, name, lab.shape, origin, spacing, ROT)
        truth = lab == value
        dice = 2 * (got & truth).sum() / (got.sum() + truth.sum())
        assert dice >= 0.95, (name, dice)


def _sr_file(path: Path, study_uid: str) -> None:
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, pydicom.uid.generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "SR", "UZ-TEST-1", "Test^Unetzoo"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


@pytest.mark.real_data
def test_dicom_input_problems_are_named_per_series(hippocampus_dir, tmp_path):
    """One folder with two series (each predicted alone), an RLE-compressed series (decoded), a series missing a
    slice, one with a slice of another orientation, an SR report; and a NIfTI input under ``dicom-seg``."""
    lab = hippocampus_labels(hippocampus_dir)[:, :, 10:26]
    inp = tmp_path / "in"
    a = write_image_series(inp / "two", lab, (0.0, 0.0, 0.0), (1.0, 1.0, 2.0), np.eye(3), prefix="A")
    b = write_image_series(inp / "two", (lab == 1).astype(np.int16), (0.0, 0.0, 0.0), (1.0, 1.0, 2.0), np.eye(3),
                           study_uid=a["study_uid"], series_number=2, prefix="B")
    rle = write_image_series(inp / "rle", lab, (0.0, 0.0, 0.0), (1.0, 1.0, 2.0), ROT)
    for f in rle["files"]:
        ds = pydicom.dcmread(f)
        ds.compress(pydicom.uid.RLELossless)
        ds.save_as(f, enforce_file_format=True)
    write_image_series(inp / "gap", lab, (0.0, 0.0, 0.0), (1.0, 1.0, 2.0), np.eye(3), skip_slices=(7,))
    tilt = write_image_series(inp / "tilted", lab, (0.0, 0.0, 0.0), (1.0, 1.0, 2.0), np.eye(3))
    ds = pydicom.dcmread(tilt["files"][5])
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*ROT[:, 0], *ROT[:, 1])]
    ds.save_as(tilt["files"][5], enforce_file_format=True)
    (inp / "report").mkdir()
    _sr_file(inp / "report" / "sr.dcm", a["study_uid"])
    nib.save(nib.Nifti1Image(lab, np.eye(4)), inp / "plain.nii.gz")
    bundle = make_bundle(tmp_path / "bundle", preprocessing=[])
    done = run_predict("--bundle", str(bundle), "--input", str(inp), "--output", str(tmp_path / "out"),
                       "--output-format", "dicom-seg")
    assert done.returncode == 1, done.stderr  # some cases failed, the others were done
    rows = read_rows(tmp_path / "out" / "summary.csv")
    status = {k: (r["status"], r["error"]) for k, r in rows.items()}
    two = sorted(k for k in rows if k.startswith("two/"))
    assert len(two) == 2 and all(status[k][0] == "ok" for k in two)
    segs = {pydicom.dcmread(rows[k]["output"]).ReferencedSeriesSequence[0].SeriesInstanceUID: rows[k] for k in two}
    assert set(segs) == {a["series_uid"], b["series_uid"]}  # each series its own SEG, never mixed
    assert int(segs[b["series_uid"]]["posterior_voxels"]) == 0 and int(segs[a["series_uid"]]["posterior_voxels"]) > 0
    assert status["rle/"][0] == "ok" and int(rows["rle/"]["anterior_voxels"]) == int((lab == 1).sum())
    assert status["gap/"][0] == "failed" and "not evenly spaced" in status["gap/"][1]
    assert status["tilted/"][0] == "failed" and "different orientations" in status["tilted/"][1]
    sr = next(k for k in rows if k.startswith("report"))
    assert status[sr][0] == "skipped" and "not an image" in status[sr][1]
    assert status["plain.nii.gz"][0] == "failed" and "needs a DICOM series" in status["plain.nii.gz"][1]


# --- a PACS in the loop ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def orthanc(tmp_path):
    """An Orthanc with DICOMweb on a free localhost port, a temporary storage folder and configuration; stopped
    at the end whatever happens. Skipped without Orthanc (a failure under UNETZOO_REQUIRE_DATA=1, i.e. CI)."""
    import requests

    if ORTHANC is None or not DICOMWEB_PLUGIN.exists():
        reason = "Orthanc with its DICOMweb plugin is not installed (Debian: apt-get install orthanc orthanc-dicomweb)"
        if REQUIRE_DATA:
            pytest.fail(f"UNETZOO_REQUIRE_DATA is set but {reason}")
        pytest.skip(reason)
    port = _free_port()
    root = tmp_path / "orthanc"
    (root / "db").mkdir(parents=True)
    config = {"Name": "unetzoo-test", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
              "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
              "AuthenticationEnabled": False, "Plugins": [str(DICOMWEB_PLUGIN)],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    (root / "orthanc.json").write_text(json.dumps(config))
    log = open(root / "orthanc.log", "w")
    proc = subprocess.Popen([ORTHANC, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if requests.get(f"{base}/system", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None, (root / "orthanc.log").read_text()
            time.sleep(0.1)
        else:
            pytest.fail(f"Orthanc did not answer on {base}: {(root / 'orthanc.log').read_text()}")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _upload(base: str, files) -> None:
    import requests

    for f in files:
        r = requests.post(f"{base}/instances", data=Path(f).read_bytes(), timeout=30)
        assert r.ok, r.text


def _series_in_study(base: str, study_uid: str) -> list[pydicom.Dataset]:
    """One dataset (the first instance's header) per series of the study, through Orthanc's own REST API."""
    import requests

    found = requests.post(f"{base}/tools/find", json={"Level": "Series", "Query": {"StudyInstanceUID": study_uid}},
                          timeout=30).json()
    out = []
    for series_id in found:
        instance = requests.get(f"{base}/series/{series_id}", timeout=30).json()["Instances"][0]
        raw = requests.get(f"{base}/instances/{instance}/file", timeout=30).content
        out.append(pydicom.dcmread(__import__("io").BytesIO(raw), stop_before_pixels=True))
    return out


@pytest.mark.real_data
def test_dicomweb_predict_push_skip_and_a_broken_series(orthanc, hippocampus_dir, tmp_path):
    """Two studies in Orthanc (the second with a series missing a slice): ``--push`` stores one SEG per good
    series into its study, referencing it; the broken series is failed with its reason and the rest complete; a
    second run skips what the PACS already holds."""
    lab = hippocampus_labels(hippocampus_dir)[:, :, 8:28]
    s1 = write_image_series(tmp_path / "up" / "s1", lab, (1.0, 2.0, 3.0), (1.0, 0.7, 2.0), ROT, patient_id="P1")
    s2 = write_image_series(tmp_path / "up" / "s2", lab, (0.0, 0.0, 0.0), (1.0, 1.0, 2.5), np.eye(3), patient_id="P2")
    broken = write_image_series(tmp_path / "up" / "s3", lab, (0.0, 0.0, 0.0), (1.0, 1.0, 2.5), np.eye(3),
                                study_uid=s2["study_uid"], series_number=2, patient_id="P2", skip_slices=(4,))
    for s in (s1, s2, broken):
        _upload(orthanc, s["files"])
    bundle = make_bundle(tmp_path / "bundle", preprocessing=[])
    args = ["--bundle", str(bundle), "--input", f"dicomweb+{orthanc}/dicom-web", "--study", s1["study_uid"],
            "--study", s2["study_uid"], "--output", str(tmp_path / "out"), "--output-format", "dicom-seg", "--push"]
    done = run_predict(*args)
    assert done.returncode == 1, done.stderr  # the broken series failed
    rows = read_rows(tmp_path / "out" / "summary.csv")
    key = {s["series_uid"]: f"{s['study_uid']}/{s['series_uid']}" for s in (s1, s2, broken)}
    assert rows[key[s1["series_uid"]]]["status"] == "ok" and rows[key[s2["series_uid"]]]["status"] == "ok"
    assert rows[key[broken["series_uid"]]]["status"] == "failed"
    assert "not evenly spaced" in rows[key[broken["series_uid"]]]["error"]
    for s in (s1, s2):
        held = _series_in_study(orthanc, s["study_uid"])
        segs = [d for d in held if d.Modality == "SEG"]
        images = {d.SeriesInstanceUID for d in held if d.Modality != "SEG"}
        assert len(segs) == len(images) - (1 if s is s2 else 0)  # one SEG per good series
        refs = [d.ReferencedSeriesSequence[0].SeriesInstanceUID for d in segs]
        assert refs == [s["series_uid"]]
        assert segs[0].SOPInstanceUID == rows[key[s["series_uid"]]]["sop_instance_uid"]
        assert rows[key[s["series_uid"]]]["pushed_to"] == f"{orthanc}/dicom-web"
    # the pushed SEG is the one written locally, and equals the labels
    labels, _ = dcmqi_read(Path(rows[key[s1["series_uid"]]]["output"]), tmp_path / "dcmqi", lab.shape,
                           (1.0, 2.0, 3.0), (1.0, 0.7, 2.0), ROT)
    assert np.array_equal(labels, lab)
    shutil.rmtree(tmp_path / "out")  # resume through the PACS, not through local files
    again = run_predict(*args)
    rows2 = read_rows(tmp_path / "out" / "summary.csv")
    assert rows2[key[s1["series_uid"]]]["status"] == "skipped" and rows2[key[s2["series_uid"]]]["status"] == "skipped"
    assert "already holds our SEG" in rows2[key[s1["series_uid"]]]["error"]
    assert rows2[key[broken["series_uid"]]]["status"] == "failed" and again.returncode == 1
    assert len([d for d in _series_in_study(orthanc, s1["study_uid"]) if d.Modality == "SEG"]) == 1  # no second SEG
