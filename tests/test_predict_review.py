"""Look before you trust (issue 17): preview PNGs, QC flags, the training-side label statistics, progress inside a
case and ``report.html`` opened in a real headless Chromium.

References are independent: expected preview pixels are built here from the label array with numpy (the
documented plane orientation and the nearest-neighbour zoom), quantiles with ``np.quantile``, components with
hand-made masks; the browser test reads the DOM through the DevTools protocol (Chromium's ``--remote-debugging-pipe``,
standard library only) and compares the sorted order with ``summary.csv``.
"""

from __future__ import annotations

import base64
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from test_predict_cli import make_bundle, read_summary

from monai_unetzoo.cli import main
from monai_unetzoo.label_statistics import case_confidence, count_pieces, write_label_statistics
from monai_unetzoo.predict.preview import OVERLAY_ALPHA, write_case_preview
from monai_unetzoo.predict.progress import count_window_batches
from monai_unetzoo.predict.qc import case_qc_flags
from monai_unetzoo.volume_io import load_scan

REPO = Path(__file__).resolve().parents[1]
RED, GREEN = (230, 25, 75), (60, 180, 75)  # the default palette's label 1 and 2


def _cube_volume():
    """(20, 16, 12) image with noise, spacing 1 x 1 x 3 mm (RAS), label 1 and 2 side by side along x."""
    rng = np.random.default_rng(0)
    image = rng.normal(100.0, 30.0, (20, 16, 12)).astype(np.float32)
    labels = np.zeros((20, 16, 12), np.uint8)
    labels[4:10, 3:10, 2:7] = 1
    labels[10:15, 3:10, 2:7] = 2
    return image, labels, np.diag([1.0, 1.0, 3.0, 1.0])


def _blend_owner(panel: np.ndarray, colours: dict[int, tuple[int, int, int]]) -> np.ndarray:
    """Per pixel the label whose colour, blended at OVERLAY_ALPHA over some grey, gives it (0: plain grey)."""
    owner = np.full(panel.shape[:2], -1, np.int64)
    p = panel.astype(np.float64)
    grey = (p.max(-1) == p.min(-1))
    owner[grey] = 0
    for value, c in colours.items():
        g = (p - OVERLAY_ALPHA * np.asarray(c, np.float64)) / (1.0 - OVERLAY_ALPHA)
        owner[(g.max(-1) - g.min(-1) <= 2.0) & (g.min(-1) >= -2) & ~grey] = value
    return owner


def test_preview_overlay_is_exactly_where_the_label_is(tmp_path):
    """Three planes through the structures' centre; in each, coloured pixels are exactly the label's voxels of that
    plane (nearest-neighbour zoom to square pixels: 3 mm slices are 3x taller than 1 mm voxels), unlabelled
    pixels are the 0.5/99.5-percentile window of the image."""
    image, labels, affine = _cube_volume()
    src = tmp_path / "cube.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), src)
    loaded, grid = load_scan(src)
    out = tmp_path / "cube_preview.png"
    panels = write_case_preview(out, loaded.numpy(), labels, grid, preprocessing=None,
                                label_names={1: "one", 2: "two"}, bundle_root=None, title="cube")
    png = np.asarray(Image.open(out).convert("RGB"))
    centre = [int(round(c.mean())) for c in np.nonzero(labels)]  # x: (6 * 6.5 + 5 * 12) / 11 = 9; y 3..9, z 2..6
    assert centre == [9, 6, 4]
    # the longest panel side is 12 slices x 3 mm = 36 mm; MIN_PANEL_PIXELS 192 -> zoom ceil(192 / 36) = 6 per mm
    zoom = 6
    # radiological display of RAS arrays: rows from superior (axial: anterior), columns from the patient's right
    # (sagittal: anterior); each entry: (plane as rows x cols, mm per row, mm per col)
    expected_planes = {
        "sagittal": (labels[centre[0], ::-1, ::-1].T, image[centre[0], ::-1, ::-1].T, 3, 1),
        "coronal": (labels[::-1, centre[1], ::-1].T, image[::-1, centre[1], ::-1].T, 3, 1),
        "axial": (labels[::-1, ::-1, centre[2]].T, image[::-1, ::-1, centre[2]].T, 1, 1),
    }
    lo, hi = np.percentile(image, [0.5, 99.5])
    assert [p.name for p in panels] == ["sagittal", "coronal", "axial"]
    for p in panels:
        lab2d, img2d, row_mm, col_mm = expected_planes[p.name]
        want = np.repeat(np.repeat(lab2d, row_mm * zoom, 0), col_mm * zoom, 1)
        crop = png[p.y0:p.y0 + want.shape[0], p.x0:p.x0 + want.shape[1]]
        assert p.rgb.shape[:2] == want.shape, p.name
        owner = _blend_owner(crop, {1: RED, 2: GREEN})
        np.testing.assert_array_equal(owner, want.astype(np.int64), err_msg=p.name)
        assert (want == 1).any() and (want == 2).any() == (p.name != "sagittal")  # x = 9 cuts label 1 only
        grey = np.round(np.clip((img2d - lo) / (hi - lo), 0, 1) * 255)
        grey = np.repeat(np.repeat(grey, row_mm * zoom, 0), col_mm * zoom, 1)
        np.testing.assert_array_equal(crop[want == 0][:, 0], grey[want == 0])


def test_preview_uses_the_bundles_ct_window_and_2d_whole_image(tmp_path):
    """CT: the bundle's ScaleIntensityRanged range (HU window) is black..white; 2D: the whole image, one panel."""
    from monai.transforms import Compose, ScaleIntensityRanged

    hu = np.linspace(-500, 500, 40 * 30, dtype=np.float32).reshape(1, 40, 30)
    labels = np.zeros((40, 30), np.uint8)
    labels[5:9, 10:20] = 1
    src = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(hu[0], np.eye(4)), src)
    _, grid = load_scan(src)
    pre = Compose([ScaleIntensityRanged(keys="image", a_min=-150, a_max=250, b_min=0, b_max=1, clip=True)])
    grid2d = type(grid)(**{**grid.__dict__, "spatial_shape": (40, 30), "affine": np.eye(3)})
    panels = write_case_preview(tmp_path / "p.png", hu, labels, grid2d, preprocessing=pre, label_names={1: "x"},
                                bundle_root=None, title="ct")
    assert len(panels) == 1 and panels[0].name == "image"
    rgb, zoom = panels[0].rgb, math.ceil(192 / 40)
    assert rgb.shape[:2] == (30 * zoom, 40 * zoom)  # rows = array axis 1, columns = axis 0
    want = np.round(np.clip((hu[0].T - -150) / 400, 0, 1) * 255).repeat(zoom, 0).repeat(zoom, 1)
    lab = labels.T.repeat(zoom, 0).repeat(zoom, 1)
    np.testing.assert_array_equal(rgb[lab == 0][:, 0], want[lab == 0])
    assert (rgb[lab == 0][:, 0] == 0).any() and (rgb[lab == 0][:, 0] == 255).any()  # -500 clipped, 500 clipped


def _save(path: Path, lab: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> str:
    nib.save(nib.Nifti1Image(lab.astype(np.int16), np.diag([*spacing, 1.0])), path)
    return str(path)


def test_label_statistics_and_qc_flags(tmp_path):
    """label_stats.json from hand-made training labels (volumes, presence, pieces, geometry), then each QC flag
    raised by exactly the case built to trigger it and by no other."""
    files = []
    for k, side in enumerate((4, 5, 6, 7)):  # anterior a cube of side^3 voxels (one piece), posterior 2 pieces
        lab = np.zeros((30, 30, 30), np.uint8)
        lab[2:2 + side, 2:2 + side, 2:2 + side] = 1
        lab[20:24, 20:24, 20:24] = 2
        lab[20:24, 20:24, 26:29] = 2
        files.append({"label": _save(tmp_path / f"l{k}.nii.gz", lab, (1.0, 1.0, 2.0))})
    stats = write_label_statistics(tmp_path / "models" / "label_stats.json", files, ["anterior", "posterior"])
    ref = json.loads((tmp_path / "models" / "label_stats.json").read_text())
    assert ref == json.loads(json.dumps(stats))
    vols = np.array([4, 5, 6, 7]) ** 3 * 2.0 / 1000.0
    ant = ref["training"]["structures"]["1"]
    assert ant["volume"]["q0.5"] == pytest.approx(np.quantile(vols, 0.005))
    assert ant["volume"]["q99.5"] == pytest.approx(np.quantile(vols, 0.995))
    assert ant["max_pieces"] == 1 and ref["training"]["structures"]["2"]["max_pieces"] == 2
    assert ref["training"]["geometry"]["spacing_sorted_max"] == [1.0, 1.0, 2.0]

    def flags_of(lab, probs=None, spacing=(1.0, 1.0, 2.0)):
        src = _save(tmp_path / "case.nii.gz", lab, spacing)
        _, grid = load_scan(src)
        return {f.code for f in case_qc_flags(lab, probs, grid, {1: "anterior", 2: "posterior"}, ref)[0]}

    normal = np.zeros((30, 30, 30), np.uint8)
    normal[2:7, 2:7, 2:7] = 1
    normal[20:24, 20:24, 20:24] = 2
    normal[20:24, 20:24, 26:29] = 2  # as in training (two pieces there, so pieces are not checked)
    assert flags_of(normal) == set()
    assert flags_of(np.where(normal == 1, 0, normal)) == {"empty"}
    big = normal.copy()
    big[2:15, 2:15, 2:15] = 1  # 13^3 * 2 mm^3 = 4.4 mL >> q99.5 (0.69 mL) + margin
    assert flags_of(big) == {"volume"}
    split = normal.copy()
    split[2:7, 2:7, 2:7] = 0
    split[2:6, 2:6, 2:6] = 1
    split[10:14, 10:14, 10:14] = 1  # two equal pieces of a structure that is always one piece
    assert flags_of(split) == {"pieces"}
    split[10:14, 10:14, 10:14] = 0
    split[10, 10, 10] = 1  # a 1-voxel speck (< 5% of the structure) is not a piece
    assert count_pieces(split == 1) == 1
    assert flags_of(np.pad(normal, ((0, 40), (0, 0), (0, 0)))) == {"geometry"}  # 70 mm extent vs 30..30 * 1.5
    assert flags_of(normal, spacing=(1.0, 1.0, 4.0)) == {"geometry", "volume"}  # 4 mm slices, twice the volume

    # confidence: thresholds recorded from validation values; one sure and one unsure prediction
    ref["validation_confidence"] = {"low_probability": 0.6, "mean_top_probability_min": 0.8,
                                    "low_confidence_fraction_max": 0.2}
    probs = np.zeros((3, 30, 30, 30), np.float32)
    probs[0] = 1.0
    for v in (1, 2):
        probs[:, normal == v] = 0.0
        probs[v, normal == v] = 0.95
        probs[0, normal == v] = 0.05
    assert flags_of(normal, probs) == set()
    conf = case_confidence(probs, normal)
    assert conf == {"mean_top_probability": pytest.approx(0.95), "low_confidence_fraction": 0.0}
    unsure = probs.copy()
    unsure[:, normal == 1] = np.array([0.45, 0.55, 0.0], np.float32)[:, None]
    n1, n2 = (normal == 1).sum(), (normal == 2).sum()
    conf = case_confidence(unsure, normal)
    assert conf["mean_top_probability"] == pytest.approx((0.55 * n1 + 0.95 * n2) / (n1 + n2))
    assert conf["low_confidence_fraction"] == pytest.approx(n1 / (n1 + n2))
    assert flags_of(normal, unsure) == {"confidence"}


def test_window_batches_counted_as_monai_calls_the_network():
    """count_window_batches equals the number of network calls MONAI's sliding_window_inference makes."""
    import torch
    from monai.inferers import sliding_window_inference

    calls = []

    def net(x):
        calls.append(x.shape[0])
        return x

    for shape, roi, overlap, bs in (((37, 50, 41), (24, 24, 24), 0.5, 4), ((10, 12), (16, 16), 0.25, 2),
                                    ((64, 30, 9), (32, -1, 8), 0.5, 3)):
        calls.clear()
        sliding_window_inference(torch.zeros(1, 1, *shape), roi, bs, net, overlap=overlap)
        assert count_window_batches(shape, roi, overlap, bs) == len(calls), shape


# ------------------------------------------------------------------------------------ the batch report in Chromium


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _pipes_to_fds_3_and_4(read_fd: int, write_fd: int):
    def move() -> None:  # runs in the child before exec
        os.dup2(read_fd, 3)
        os.dup2(write_fd, 4)

    return move


class DevToolsPipe:
    """Chromium's DevTools protocol over ``--remote-debugging-pipe`` (fds 3/4, NUL-terminated JSON messages)."""

    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--remote-debugging-pipe", "--allow-file-access-from-files"]

    def __init__(self, binary: str, profile: Path):
        import fcntl

        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # the protocol wants the pipes as fds 3 (commands in) and 4 (replies out): copies at fds >= 10 first, so
        # that moving them to 3 and 4 in the child cannot overwrite one with the other
        high = (fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10))
        self.proc = subprocess.Popen([binary, *self.FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     preexec_fn=_pipes_to_fds_3_and_4(*high), close_fds=False,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in (to_chrome_r, from_chrome_w, *high):
            os.close(fd)
        self._buf, self._next_id = b"", 0

    def call(self, method: str, session: str | None = None, **params):
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium closed the DevTools pipe during {method}")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, session: str, expression: str):
        result = self.call("Runtime.evaluate", session, expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)
        os.close(self._to_chrome)
        os.close(self._from_chrome)


def _open_page(cdp: DevToolsPipe, url: str) -> str:
    target = cdp.call("Target.createTarget", url="about:blank")["targetId"]
    session = cdp.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    cdp.call("Page.enable", session)
    cdp.call("Emulation.setDeviceMetricsOverride", session, width=1400, height=1000, deviceScaleFactor=1, mobile=False)
    cdp.call("Page.navigate", session, url=url)
    cdp.evaluate(session, "new Promise(r => { if (document.readyState === 'complete') r(1);"
                          " else window.addEventListener('load', () => r(1)); })")
    return session


def _report_batch(tmp_path: Path) -> tuple[Path, dict[str, dict[str, str]]]:
    """A batch of 5 identity-network cases with different posterior volumes (one of them empty -> flagged), one
    unreadable input, through the CLI."""
    bundle = make_bundle(tmp_path / "fake3d", name="fake3d")
    inp = tmp_path / "in"
    inp.mkdir()
    for k, size in enumerate((3, 6, 2, 5, 0)):
        lab = np.zeros((18, 16, 14), np.int16)
        lab[2:8, 2:8, 2:8] = 1
        lab[10:10 + size, 8:8 + size, 6:6 + size] = 2
        nib.save(nib.Nifti1Image(lab, np.diag([0.8, 1.0, 2.0, 1.0])), inp / f"case{k}.nii.gz")
    (inp / "broken.nii.gz").write_bytes(b"not a nifti")
    out = tmp_path / "out"
    rc = main(["predict", "--bundle", str(bundle), "--input", str(inp), "--output", str(out), "--quiet"])
    assert rc == 1  # the broken input failed; the others are ok
    return out, read_summary(out / "summary.csv")


def test_report_in_headless_chromium(tmp_path):
    """report.html in a real Chromium: one row per case, every thumbnail loads, a click on a volume header sorts
    the rows by that volume (ascending, then descending on a second click), and a screenshot is taken."""
    from conftest import REQUIRE_DATA

    binary = _chromium()
    if binary is None:
        if REQUIRE_DATA:
            pytest.fail("UNETZOO_REQUIRE_DATA is set but chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium not installed (apt-get install chromium; .ci/run installs it)")
    out, rows = _report_batch(tmp_path)
    assert rows["case4.nii.gz"]["qc_flags"] == "empty" and rows["case1.nii.gz"]["qc"] == "ok"
    html_text = (out / "report.html").read_text()
    assert "http://" not in html_text.replace("http://www.w3.org", "") and "https://" not in html_text  # no network
    with tempfile.TemporaryDirectory() as profile:
        cdp = DevToolsPipe(binary, Path(profile))
        try:
            session = _open_page(cdp, (out / "report.html").as_uri())
            cases = cdp.evaluate(session, "Array.from(document.querySelectorAll('#summary tbody tr')).map(r => r.dataset.case)")
            assert sorted(cases) == sorted(rows)  # one row per case, the failed one included
            images = cdp.evaluate(session, "Array.from(document.images).map(i => [i.complete, i.naturalWidth, "
                                           "i.closest('tr').dataset.case])")
            ok_cases = {c for c, r in rows.items() if r["status"] == "ok"}
            assert {c for _, _, c in images} == ok_cases
            assert all(complete and width > 0 for complete, width, _ in images), images  # none broken
            header = cdp.evaluate(session, "Array.from(document.querySelectorAll('#summary th')).map(h => h.textContent)")
            col = header.index("posterior_mL")
            click = f"document.querySelectorAll('#summary th')[{col}].click()"
            order = f"Array.from(document.querySelectorAll('#summary tbody tr')).map(r => r.dataset.case)"
            cdp.evaluate(session, click)
            ascending = cdp.evaluate(session, order)
            cdp.evaluate(session, click)
            descending = cdp.evaluate(session, order)
            shot = base64.b64decode(cdp.call("Page.captureScreenshot", session, format="png")["data"])
        finally:
            cdp.close()
    by_volume = sorted(ok_cases, key=lambda c: float(rows[c]["posterior_mL"]))
    assert ascending[:len(by_volume)] == by_volume and ascending[-1] == "broken.nii.gz"  # empty cells last
    assert descending[:len(by_volume)] == by_volume[::-1]
    assert ascending != sorted(rows)  # the sort really reordered the case-name order
    (tmp_path / "report.png").write_bytes(shot)
    if os.environ.get("UNETZOO_SCREENSHOT_DIR"):  # keep the screenshot for a person to look at
        shutil.copy(tmp_path / "report.png", Path(os.environ["UNETZOO_SCREENSHOT_DIR"]) / "report.png")
    img = Image.open(tmp_path / "report.png")
    assert img.size[0] > 300 and np.unique(np.asarray(img.convert("L"))).size > 10  # a rendered page, not a blank one


def test_report_rewritten_after_each_case_and_no_preview(tmp_path):
    """--no-preview writes no PNG and no thumbnail; report.html and summary.csv list every case; the window bar
    stays silent under --quiet."""
    bundle = make_bundle(tmp_path / "fake3d", name="fake3d")
    inp = tmp_path / "in"
    inp.mkdir()
    lab = np.zeros((12, 12, 12), np.int16)
    lab[2:6, 2:6, 2:6] = 1
    lab[7:10, 7:10, 7:10] = 2
    for k in range(2):
        nib.save(nib.Nifti1Image(lab, np.eye(4)), inp / f"c{k}.nii.gz")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "monai_unetzoo", "predict", "--bundle", str(bundle), "--input",
                           str(inp), "--output", str(out), "--no-preview", "--quiet"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "win-batch" not in proc.stderr and "Predicting" not in proc.stderr
    assert not list(out.glob("*.png"))
    page = (out / "report.html").read_text()
    assert page.count("<tr class=") == 2 and "<img" not in page
    with open(out / "summary.csv", newline="") as f:
        assert {r["qc"] for r in csv.DictReader(f)} == {"ok"}
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["settings"]["preview"] is False and prov["status"] == "finished"


# ------------------------------------------------------------------------------------------- real hippocampus data


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_hippocampus_corrupted_inputs_flagged_normal_ones_not(hippocampus_dir, totalseg_dir, tmp_path):
    """A short training run of the bundle (its own train.json: label_stats.json written at the end), then
    ``unetzoo predict`` on held-out cases (neither trained on nor used for the thresholds): those are not flagged;
    the same case with inverted intensity, and a CT volume given to this MRI bundle, are."""
    from monai_unetzoo.data.msd import msd_datalists

    from test_hippocampus_bundle import BUNDLE, run_bundle

    train_out = tmp_path / "train"
    run_bundle("training", "--config_file", str(BUNDLE / "train.json"), "--dataset_dir", str(hippocampus_dir),
               "--output_dir", str(train_out), "--num_train_cases", str(TRAIN_CASES), "--num_val_cases", "6",
               "--epochs", str(TRAIN_EPOCHS), "--val_interval", str(TRAIN_EPOCHS), "--num_threads", "2", timeout=1500)
    stats = json.loads((train_out / "label_stats.json").read_text())
    assert stats["training"]["cases"] == TRAIN_CASES and stats["validation_confidence"]["cases"] == 6
    held_out = msd_datalists(hippocampus_dir)["validation"][6:10]  # after the 6 validation cases used above
    inp = tmp_path / "in"
    inp.mkdir()
    for c in held_out:
        os.symlink(c["image"], inp / Path(c["image"]).name)
    src = nib.load(held_out[0]["image"])
    data = np.asarray(src.dataobj, dtype=np.float32)
    nib.save(nib.Nifti1Image(data.max() + data.min() - data, src.affine), inp / "inverted.nii.gz")
    ct = nib.load(totalseg_dir / "example_ct_sm.nii.gz")  # 3 mm abdominal CT, HU; a central 72 x 72 x 48 mm block
    nib.save(ct.slicer[49:73, 38:62, 7:23], inp / "ct_abdomen.nii.gz")  # keeps the run short (1 mm resampling)
    out = tmp_path / "out"
    rc = main(["predict", "--bundle", str(BUNDLE), "--checkpoint", str(train_out / "model.pt"), "--input", str(inp),
               "--output", str(out), "--threads", "2", "--no-tta", "--quiet"])
    rows = read_summary(out / "summary.csv")
    assert rc == 0, rows
    normal = {Path(c["image"]).name for c in held_out}
    flags = {case: (r["qc"], r["qc_reasons"]) for case, r in rows.items()}
    assert all(flags[c][0] == "ok" for c in normal), flags
    assert flags["inverted.nii.gz"][0] == "flagged", flags
    assert flags["ct_abdomen.nii.gz"][0] == "flagged" and "geometry" in rows["ct_abdomen.nii.gz"]["qc_flags"], flags
    assert all((out / r["preview"]).is_file() for r in rows.values())


TRAIN_CASES, TRAIN_EPOCHS = 40, 6  # 120 iterations of batch 2
