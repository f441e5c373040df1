"""Nothing silently wrong, nothing lost: ``unetzoo predict`` under hostile inputs and faults (issue 15).

Each test runs the real command (the ``unetzoo`` console script in a subprocess) with the real hippocampus bundle
and real Task04 volumes from ``../shared/data``, and asserts the summary rows, the exit code, the output geometry
against the input (SimpleITK read-back) and that nothing written earlier is lost. The checkpoint is a seeded,
untrained ``network_def``: these tests are about the tool, not the accuracy, and two seeds give two "checkpoints".
"""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from test_volume_io import write_dicom_series

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "hippocampus"
UNETZOO = shutil.which("unetzoo", path=str(Path(sys.executable).parent)) or "unetzoo"
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")

pytestmark = pytest.mark.real_data


def predict(*args: str, preexec_fn=None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([UNETZOO, "predict", "--bundle", str(BUNDLE), "--quiet", *args], capture_output=True,
                          encoding="utf-8", errors="replace", env=ENV, timeout=timeout, preexec_fn=preexec_fn)


def rows_of(out: Path, name: str = "summary.csv") -> dict[str, dict[str, str]]:
    with open(out / name, newline="", encoding="utf-8") as f:
        return {r["case"]: r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """Two different seeded checkpoints of the hippocampus network_def (state dicts, as training writes)."""
    from monai.bundle import ConfigParser

    folder = tmp_path_factory.mktemp("ckpt")
    paths = []
    for seed in (0, 1):
        parser = ConfigParser()
        parser.read_config(str(BUNDLE / "train.json"))
        parser["bundle_root"] = str(BUNDLE)
        parser.get_parsed_content("imports")
        torch.manual_seed(seed)
        net = parser.get_parsed_content("network_def")
        paths.append(folder / f"seed{seed}.pt")
        torch.save(net.state_dict(), paths[-1])
    return paths[0], paths[1]


@pytest.fixture
def volumes(hippocampus_dir) -> list[Path]:
    return sorted((hippocampus_dir / "imagesTr").glob("hippocampus_*.nii.gz"))[:3]


def link(folder: Path, files: list[Path]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f.name).symlink_to(f)
    return folder


def test_rerun_with_another_checkpoint_or_a_damaged_output_predicts_again(checkpoints, volumes, tmp_path):
    a, b = checkpoints
    inp, out = link(tmp_path / "in", volumes[:2]), tmp_path / "out"
    assert predict("--checkpoint", str(a), "--input", str(inp), "--output", str(out)).returncode == 0
    seg = out / volumes[0].name.replace(".nii.gz", "_seg.nii.gz")
    first = {p.name: p.read_bytes() for p in out.glob("*_seg.nii.gz")}
    # same checkpoint and settings: skipped, files untouched
    assert predict("--checkpoint", str(a), "--input", str(inp), "--output", str(out)).returncode == 0
    assert {r["status"] for r in rows_of(out).values()} == {"skipped"}
    assert {p.name: p.read_bytes() for p in out.glob("*_seg.nii.gz")} == first
    # another checkpoint: predicted again, said so, and the files are the other model's
    proc = predict("--checkpoint", str(b), "--input", str(inp), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = rows_of(out)
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert all("another checkpoint" in r["note"] for r in rows.values())
    assert {p.name: p.read_bytes() for p in out.glob("*_seg.nii.gz")} != first
    # other settings (mirroring off) and a damaged file: predicted again
    assert predict("--checkpoint", str(b), "--input", str(inp), "--output", str(out), "--no-tta").returncode == 0
    assert all("other settings (tta_axes)" in r["note"] for r in rows_of(out).values())
    seg.write_bytes(seg.read_bytes()[:100])  # truncated behind the tool's back
    assert predict("--checkpoint", str(b), "--input", str(inp), "--output", str(out), "--no-tta").returncode == 0
    rows = rows_of(out)
    assert rows[volumes[0].name]["status"] == "ok" and "damaged" in rows[volumes[0].name]["note"]
    assert rows[volumes[1].name]["status"] == "skipped"
    assert nib.load(seg).shape == nib.load(volumes[0]).shape


def test_nifti_in_metres_is_honoured_and_zero_pixdim_is_refused(checkpoints, volumes, tmp_path):
    """A 1 mm scan stored in metres (pixdim 0.001, xyzt_units metre) predicts exactly like the mm file, and its
    output keeps the input's header; a zero pixdim is refused with the reason."""
    src = nib.load(volumes[0])
    data = np.asarray(src.dataobj)
    inp = tmp_path / "in"
    inp.mkdir()
    mm = nib.Nifti1Image(data, src.affine)
    mm.header.set_xyzt_units("mm")
    nib.save(mm, inp / "in_mm.nii.gz")
    metres_affine = src.affine.copy()
    metres_affine[:3] /= 1000.0
    metres = nib.Nifti1Image(data, metres_affine)
    metres.header.set_xyzt_units("meter")
    nib.save(metres, inp / "in_metres.nii.gz")
    zero = nib.Nifti1Image(data, src.affine)
    zero.header["pixdim"][2] = 0.0
    zero.set_qform(None, code=0)
    zero.set_sform(None, code=0)
    nib.save(zero, inp / "zero_pixdim.nii.gz")
    out = tmp_path / "out"
    proc = predict("--checkpoint", str(checkpoints[0]), "--input", str(inp), "--output", str(out))
    assert proc.returncode == 1, proc.stderr  # the zero-pixdim case failed, the others are ok
    rows = rows_of(out)
    assert rows["in_mm.nii.gz"]["status"] == rows["in_metres.nii.gz"]["status"] == "ok"
    assert rows["zero_pixdim.nii.gz"]["status"] == "failed"
    assert "zero or invalid voxel size" in rows["zero_pixdim.nii.gz"]["error"]
    a = np.asarray(nib.load(out / "in_mm_seg.nii.gz").dataobj)
    b_img = nib.load(out / "in_metres_seg.nii.gz")
    np.testing.assert_array_equal(np.asarray(b_img.dataobj), a)
    assert a.any()  # the untrained network labels something: the comparison is not between two empty maps
    np.testing.assert_array_equal(b_img.affine, nib.load(inp / "in_metres.nii.gz").affine)  # the input grid, units kept
    assert b_img.header.get_xyzt_units()[0] == "meter"
    # the summary's volumes are physical: identical for both files
    for col in ("anterior_hippocampus_mL", "posterior_hippocampus_mL"):
        assert rows["in_mm.nii.gz"][col] == rows["in_metres.nii.gz"][col]


def _dicom_from_volume(folder: Path, volume: Path) -> list[Path]:
    img = sitk.ReadImage(str(volume))
    arr = sitk.GetArrayFromImage(img).transpose()  # (x, y, z)
    write_dicom_series(folder, arr, img.GetOrigin(), (1.0, 1.0, 1.5), img.GetDirection())
    return sorted(folder.glob("*.dcm"))


def test_dicom_series_with_a_missing_or_duplicated_slice_is_refused(checkpoints, volumes, tmp_path):
    inp = tmp_path / "in"
    good = _dicom_from_volume(inp / "good", volumes[0])
    gap = _dicom_from_volume(inp / "gap", volumes[1])
    gap[len(gap) // 2].unlink()  # a slice lost in transfer
    dup = _dicom_from_volume(inp / "dup", volumes[2])
    shutil.copy(dup[3], inp / "dup" / "IM_copy.dcm")  # the same slice twice
    out = tmp_path / "out"
    proc = predict("--checkpoint", str(checkpoints[0]), "--input", str(inp), "--output", str(out))
    assert proc.returncode == 1, proc.stderr
    rows = rows_of(out)
    assert rows["good/"]["status"] == "ok"
    assert rows["gap/"]["status"] == "failed" and "not evenly spaced" in rows["gap/"]["error"]
    assert rows["dup/"]["status"] == "failed" and "duplicated slice" in rows["dup/"]["error"]
    seg, src = sitk.ReadImage(str(out / "good_seg.nii.gz")), sitk.ReadImage([str(p) for p in good])
    assert seg.GetSize() == src.GetSize()
    np.testing.assert_allclose(seg.GetSpacing(), src.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(seg.GetOrigin(), src.GetOrigin(), atol=1e-4)
    assert not (out / "gap_seg.nii.gz").exists() and not (out / "dup_seg.nii.gz").exists()


def test_metadata_that_does_not_match_the_network_is_a_usage_error(checkpoints, volumes, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("models", "eval", "*.pt"))
    meta = json.loads((bundle / "metadata.json").read_text())
    meta["network_data_format"]["outputs"]["pred"]["num_channels"] = 4
    (bundle / "metadata.json").write_text(json.dumps(meta))
    out = tmp_path / "out"
    proc = subprocess.run([UNETZOO, "predict", "--bundle", str(bundle), "--checkpoint", str(checkpoints[0]),
                           "--input", str(volumes[0]), "--output", str(out)], capture_output=True, encoding="utf-8", errors="replace",
                          env=ENV, timeout=300)
    assert proc.returncode == 2
    assert "declares 4 output channel(s)" in proc.stderr and "(1, 3, 40, 56, 40)" in proc.stderr
    assert not (out / "summary.csv").exists()


def test_odd_names_and_symlink_loops_are_reported_not_fatal(checkpoints, volumes, tmp_path):
    inp = link(tmp_path / "in", volumes[:1])
    odd = os.fsencode(str(inp)) + b"/caf\xe9_latin1.nii.gz"  # not valid UTF-8
    os.symlink(os.fsencode(str(volumes[1])), odd)
    os.symlink("loop_b", inp / "loop_a.nii.gz")
    os.symlink("loop_a.nii.gz", inp / "loop_b")
    out = tmp_path / "out"
    proc = predict("--checkpoint", str(checkpoints[0]), "--input", str(inp), "--output", str(out))
    assert proc.returncode == 1, proc.stderr
    rows = rows_of(out)
    assert rows[volumes[0].name]["status"] == "ok"
    odd_row = next(r for k, r in rows.items() if k.startswith("caf"))
    assert odd_row["status"] == "ok" and "\\udce9" in odd_row["case"]
    assert any(r["status"] == "failed" and "cannot be opened" in r["error"] for k, r in rows.items() if "loop" in k)
    assert os.path.exists(os.fsencode(str(out)) + b"/caf\xe9_latin1_seg.nii.gz")


def test_full_disk_stops_cleanly_and_lists_what_is_not_done(checkpoints, volumes, tmp_path):
    """A file-size limit (RLIMIT_FSIZE: writes past it fail with EFBIG, like a full disk) that the small summary
    fits under but a probability map does not: the run stops with exit 3, the summary lists the failed case and
    every case not done, provenance says why; the first case's outputs (written before) are intact."""
    inp, out = link(tmp_path / "in", volumes), tmp_path / "out"
    assert predict("--checkpoint", str(checkpoints[0]), "--input", str(inp / volumes[0].name), "--output",
                   str(out)).returncode == 0
    kept = (out / volumes[0].name.replace(".nii.gz", "_seg.nii.gz")).read_bytes()

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))

    proc = predict("--checkpoint", str(checkpoints[0]), "--input", str(inp), "--output", str(out),
                   "--save-probabilities", preexec_fn=limit)
    assert proc.returncode == 3, proc.stderr
    assert "free space" in proc.stderr
    rows = rows_of(out)
    assert len(rows) == 3 and sum(r["status"] == "failed" for r in rows.values()) == 1
    assert sum(r["status"] == "interrupted" and "disk is full" in r["error"] for r in rows.values()) == 2
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["status"].startswith("stopped: the output could not be written")
    assert (out / volumes[0].name.replace(".nii.gz", "_seg.nii.gz")).read_bytes() == kept
    assert not list(out.glob("*.tmp-*"))  # no half-written file left


def test_a_second_run_on_a_busy_output_folder_is_refused(checkpoints, volumes, tmp_path):
    from monai_unetzoo.predict.lock import OutputFolderLock

    out = tmp_path / "out"
    out.mkdir()
    other = subprocess.Popen(["sleep", "60"])  # stands for another live run writing a temporary file
    live_tmp = out / f"hippocampus_x.tmp-{other.pid}-abc123.nii.gz"
    with OutputFolderLock(out):  # a real flock, held by this (live) process
        proc = predict("--checkpoint", str(checkpoints[0]), "--input", str(volumes[0]), "--output", str(out))
        assert proc.returncode == 2 and f"in use by another unetzoo predict (pid {os.getpid()})" in proc.stderr
    assert not (out / "summary.csv").exists()
    live_tmp.write_bytes(b"in progress")
    from monai_unetzoo.volume_io import remove_stale_temporaries

    try:
        assert remove_stale_temporaries(out / "hippocampus_x.nii.gz") == []  # owner alive: kept
    finally:
        other.kill()
        other.wait()
    live_tmp.unlink()
    dead = out / "hippocampus_x.tmp-999999999-abc123.nii.gz"
    dead.write_bytes(b"left by a killed run")
    assert remove_stale_temporaries(out / "hippocampus_x.nii.gz") == [dead]
    # lock released: the same command now runs
    assert predict("--checkpoint", str(checkpoints[0]), "--input", str(volumes[0]), "--output", str(out)).returncode == 0


def test_hostile_headers_and_unusable_output_folder(checkpoints, volumes, tmp_path):
    """A header claiming a 4000^3 image in a few bytes is refused before allocating it; an .mhd whose data file
    is missing names it; --output equal to the input folder says so."""
    inp = link(tmp_path / "in", volumes[:1])
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((4000, 4000, 4000))
    hdr.set_data_dtype(np.int16)
    huge = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4))
    nib.save(huge, inp / "huge.nii")
    raw = bytearray((inp / "huge.nii").read_bytes())
    raw[:348] = hdr.binaryblock  # header says 4000^3, the file holds 8 voxels
    (inp / "huge.nii").write_bytes(bytes(raw))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16)), str(inp / "detached.mhd"))
    (inp / "detached.raw").unlink()
    out = tmp_path / "out"
    proc = predict("--checkpoint", str(checkpoints[0]), "--input", str(inp), "--output", str(out))
    assert proc.returncode == 1, proc.stderr
    rows = rows_of(out)
    assert rows[volumes[0].name]["status"] == "ok"
    assert "declares an image of at least 128 GB" in rows["huge.nii"]["error"]
    assert "detached.raw (named by the header) is missing" in rows["detached.mhd"]["error"]
    same = predict("--checkpoint", str(checkpoints[0]), "--input", str(inp), "--output", str(inp))
    assert same.returncode == 2 and "is the input folder" in same.stderr


def test_preprocessing_errors_name_the_transform_not_an_address():
    from monai.transforms import Compose, Lambdad

    from monai_unetzoo.predict.case import describe_failure

    def needs_four_dims(x):
        raise ValueError(f"expected a 4D array, got {tuple(x.shape)}")

    with pytest.raises(Exception) as info:
        Compose([Lambdad(keys="image", func=needs_four_dims)])({"image": torch.zeros(1, 4, 4)})
    assert "object at 0x" in str(info.value)  # what MONAI's message looks like
    text = describe_failure(info.value)
    assert text == "Lambdad: ValueError: expected a 4D array, got (1, 4, 4)"


def test_training_data_problems_exit_2_with_every_problem_listed(hippocampus_dir, tmp_path):
    """``run training`` on a data set with missing files, then with a dataset.json that is not JSON: exit 2, every
    problem of the pass in one message naming the files, no traceback."""
    data = tmp_path / "Task04"
    for sub in ("imagesTr", "labelsTr"):
        (data / sub).mkdir(parents=True)
    cases = ["hippocampus_004", "hippocampus_006", "hippocampus_007"]
    for cid in cases:
        for sub in ("imagesTr", "labelsTr"):
            (data / sub / f"{cid}.nii.gz").symlink_to(hippocampus_dir / sub / f"{cid}.nii.gz")
    (data / "labelsTr" / "hippocampus_006.nii.gz").unlink()
    listed = cases + ["hippocampus_999"]
    (data / "dataset.json").write_text(json.dumps({"training": [
        {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in listed]}))

    def train() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
                               str(BUNDLE / "train.json"), "--dataset_dir", str(data), "--output_dir",
                               str(tmp_path / "models"), "--epochs", "1"], capture_output=True, encoding="utf-8", errors="replace", env=ENV,
                              timeout=300)

    proc = train()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "3 problem(s)" in proc.stderr and "Traceback" not in proc.stderr
    for missing in ("labelsTr/hippocampus_006.nii.gz", "imagesTr/hippocampus_999.nii.gz",
                    "labelsTr/hippocampus_999.nii.gz"):
        assert missing in proc.stderr
    (data / "dataset.json").write_text("{not json")
    proc = train()
    assert proc.returncode == 2 and "cannot be parsed as JSON" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "models" / "model.pt").exists()


def test_read_ahead_writes_the_same_outputs_and_reports_the_same_failures(checkpoints, volumes, tmp_path):
    """``--read-ahead`` (the next case read and preprocessed on a second thread) on real Task04 volumes with a
    truncated file between them: the same label maps byte for byte, the same statuses and the same error naming the
    bad file as ``--no-read-ahead`` (a read that fails on the worker is reported as a read on the main thread)."""
    inp = link(tmp_path / "in", volumes[:3])
    (inp / "b_truncated.nii.gz").write_bytes(volumes[0].read_bytes()[:300])
    outputs = {}
    for mode in ("--read-ahead", "--no-read-ahead"):
        out = tmp_path / mode.strip("-")
        proc = predict("--checkpoint", str(checkpoints[0]), "--input", str(inp), "--output", str(out), mode)
        assert proc.returncode == 1, proc.stderr  # one case failed
        assert json.loads((out / "provenance.json").read_text())["settings"]["read_ahead"] is (mode == "--read-ahead")
        rows = rows_of(out)
        outputs[mode] = ({c: (r["status"], r["error"].replace(str(out), "OUT")) for c, r in rows.items()},
                         {p.name: p.read_bytes() for p in sorted(out.glob("*_seg.nii.gz"))})
    statuses, files = outputs["--read-ahead"]
    assert statuses == outputs["--no-read-ahead"][0]
    assert statuses["b_truncated.nii.gz"][0] == "failed" and "b_truncated.nii.gz" in statuses["b_truncated.nii.gz"][1]
    assert sorted(s for s, _ in statuses.values()) == ["failed", "ok", "ok", "ok"]
    assert files == outputs["--no-read-ahead"][1] and len(files) == 3


def test_read_ahead_loads_the_next_case_on_its_worker_thread(checkpoints, volumes, tmp_path):
    """:class:`CaseReadAhead` on the real pipeline: a case asked for ahead is read on the worker thread and its
    preprocessed image equals a read on this thread; one not asked for is read here; a failed read raises on take."""
    import threading

    from monai_unetzoo.predict import CasePipeline, PredictionSettings, load_prediction_bundle
    from monai_unetzoo.predict.discovery import discover_prediction_cases
    from monai_unetzoo.predict.prefetch import CaseReadAhead
    from monai_unetzoo.volume_io import ScanReadError

    bundle = load_prediction_bundle(BUNDLE, checkpoints[0])
    pipeline = CasePipeline(bundle, PredictionSettings(device="cpu", threads=2).resolve(bundle))
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(volumes[0].read_bytes()[:300])
    found = {c.source.name: c for c in discover_prediction_cases([volumes[0], volumes[1], bad], tmp_path / "out")[0]}
    cases = [found[volumes[0].name], found[volumes[1].name], found[bad.name]]
    threads = []
    load = pipeline.load
    pipeline.load = lambda case: (threads.append(threading.current_thread().name), load(case))[1]
    reader = CaseReadAhead(pipeline)
    try:
        reader.ahead(cases[0])
        ahead = reader.take(cases[0])
        here = reader.take(cases[1])
        reader.ahead(cases[2])
        with pytest.raises(ScanReadError, match="truncated.nii.gz"):
            reader.take(cases[2])
    finally:
        reader.close()
    assert threads[0].startswith("unetzoo-read") and threads[1] == threading.current_thread().name
    np.testing.assert_array_equal(ahead.data["image"].numpy(), load(cases[0]).data["image"].numpy())
    assert here.grid.spatial_shape == tuple(nib.load(str(volumes[1])).shape)
