"""Shared helpers of the nnU-Net v2 side-by-side benchmarks (``benchmarks/peers/*.py``; not a library, not a test).

* :func:`nnunet_environment` -- the ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` folders under one
  work folder (the budgeted trainer is found by ``nnunet_cli.py``, not through ``nnUNet_extTrainer``).
* :func:`write_nnunet_raw_hippocampus` -- MSD Task04 in nnU-Net v2's raw layout, as symbolic links (the data never
  leaves ``../shared/data``), and :func:`write_nnunet_splits` -- our fixed split as nnU-Net's fold 0.
* :func:`write_nnunet_raw_drive` -- DRIVE converted to nnU-Net's 2D PNG layout (FOV outside = its ignore label).
* :func:`score_label_files` -- the one Dice code both tools are scored with (MONAI ``DiceMetric`` per foreground
  class on the label maps as written, a class absent from both maps skipped), so nothing depends on either tool's
  own evaluator; :func:`score_fov_files` -- DRIVE's FOV-masked vessel Dice (our bundle's metric) for both.
* :class:`NnunetRun` -- nnU-Net's plan/preprocess, train and predict commands for one data set and budget.
* :func:`timed_run` -- a command run to completion, with its wall time.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

PEERS = Path(__file__).resolve().parent
REPO = PEERS.parents[1]
SHARED_DATA = Path(os.environ.get("UNETZOO_DATA_DIR", REPO.parent / "shared" / "data"))
NNUNET_CLI = PEERS / "nnunet_cli.py"  # nnUNetv2_train / nnUNetv2_predict (see its docstring for why not the scripts)
HIPPOCAMPUS_ID = 4
HIPPOCAMPUS_NAME = "Dataset004_Hippocampus"
DRIVE_ID = 501  # outside the MSD task numbers nnU-Net's own conversion scripts use
DRIVE_NAME = "Dataset501_DRIVE"
sys.path.insert(0, str(REPO / "benchmarks"))


def nnunet_environment(workdir: Path, results: str = "nnUNet_results") -> dict[str, str]:
    """Environment for nnU-Net's commands: its three folders under ``workdir``."""
    env = dict(os.environ)
    env.update({
        "nnUNet_raw": str(workdir / "nnUNet_raw"),
        "nnUNet_preprocessed": str(workdir / "nnUNet_preprocessed"),
        "nnUNet_results": str(workdir / results),
    })
    return env


def bin_path(name: str) -> str:
    """A console script of the running interpreter's environment (``nnUNetv2_train``, ``unetzoo``)."""
    return str(Path(sys.executable).parent / name)


def hippocampus_split(dataset_dir: Path) -> tuple[list[dict], list[dict]]:
    """Our bundle's fixed split (fold 0 of 5, 166 / 42 cases): ``(train, val)`` datalists."""
    from monai_unetzoo.data.msd import msd_datalists

    lists = msd_datalists(dataset_dir)
    return lists["training"], lists["validation"]


def link_file(src: str | Path, dst: Path) -> None:
    """``dst`` -> ``src`` as a symbolic link (replacing an old one), folders created."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    dst.symlink_to(Path(src).resolve())


def write_nnunet_raw_hippocampus(dataset_dir: Path, workdir: Path) -> Path:
    """Every labelled Task04 case in nnU-Net's raw layout (``imagesTr/<id>_0000.nii.gz``, ``labelsTr/<id>.nii.gz``,
    a v2 ``dataset.json``), as links to ``dataset_dir``. Returns the raw dataset folder."""
    from monai_unetzoo.data.msd import build_msd_datalist

    raw = workdir / "nnUNet_raw" / HIPPOCAMPUS_NAME
    cases = build_msd_datalist(dataset_dir, "training")
    for case in cases:
        link_file(case["image"], raw / "imagesTr" / f"{case['case_id']}_0000.nii.gz")
        link_file(case["label"], raw / "labelsTr" / f"{case['case_id']}.nii.gz")
    source = json.loads((dataset_dir / "dataset.json").read_text())
    labels = {name: int(value) for value, name in source["labels"].items()}
    dataset_json = {"channel_names": {"0": "MRI"}, "labels": labels, "numTraining": len(cases),
                    "file_ending": ".nii.gz", "name": "Hippocampus (MSD Task04, open cases)"}
    (raw / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return raw


def write_nnunet_splits(workdir: Path, train: Sequence[dict], val: Sequence[dict],
                        dataset_name: str = HIPPOCAMPUS_NAME) -> Path:
    """Our split as nnU-Net's ``splits_final.json`` (fold 0 only), so both tools train and validate the same cases."""
    path = workdir / "nnUNet_preprocessed" / dataset_name / "splits_final.json"
    path.write_text(json.dumps([{"train": [d["case_id"] for d in train], "val": [d["case_id"] for d in val]}], indent=2))
    return path


def link_inputs(cases: Sequence[dict], folder: Path, suffix: str = ".nii.gz") -> Path:
    """Links to the cases' images in ``folder`` as ``<case_id><suffix>`` (nnU-Net wants ``_0000.nii.gz``)."""
    for case in cases:
        link_file(case["image"], folder / f"{case['case_id']}{suffix}")
    return folder


def predicted_file(folder: Path, case_id: str, suffix: str = ".nii.gz") -> Path:
    """The one label map ``unetzoo predict`` wrote for ``case_id`` under ``folder``."""
    found = sorted(folder.rglob(f"{case_id}_seg{suffix}"))  # unetzoo predict writes <input stem>_seg<suffix>
    if len(found) != 1:
        raise FileNotFoundError(f"{folder}: expected one label map for {case_id}, found {[p.name for p in found]}")
    return found[0]


def score_label_files(pairs: Sequence[tuple[Path, Path]], num_classes: int) -> dict:
    """Dice per foreground class of predicted vs reference label files (same grid required), mean over cases.

    ``pairs``: ``(prediction, reference)`` paths. Returns ``{"per_class": [...], "mean": float, "cases": n}``; a class
    absent from both maps of a case (MONAI's NaN) does not count for that case.
    """
    import nibabel as nib
    import torch
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    rows = []
    for pred_path, ref_path in pairs:
        pred = np.asarray(nib.load(str(pred_path)).dataobj).astype(np.int64)
        ref = np.asarray(nib.load(str(ref_path)).dataobj).astype(np.int64)
        if pred.shape != ref.shape:
            raise ValueError(f"{pred_path}: shape {pred.shape} differs from the reference {ref_path} {ref.shape}")
        p = one_hot(torch.from_numpy(pred)[None, None], num_classes)
        r = one_hot(torch.from_numpy(ref)[None, None], num_classes)
        rows.append(metric(p, r)[0].numpy())
    table = np.stack(rows)
    per_class = np.nanmean(table, axis=0)
    return {"per_class": [round(float(v), 4) for v in per_class], "mean": round(float(np.mean(per_class)), 4),
            "cases": len(rows)}


def write_nnunet_raw_drive(dataset_dir: Path, workdir: Path) -> Path:
    """DRIVE's 20 training images in nnU-Net's raw 2D layout; returns the raw dataset folder.

    Converted, not linked: nnU-Net's natural-image reader takes PNG/BMP/TIF but not DRIVE's GIF annotations and FOV
    masks. ``imagesTr/<id>_0000.png`` is the RGB photograph (three channels from one file, as nnU-Net reads RGB);
    ``labelsTr/<id>.png`` is 0 background and 1 vessel inside the field of view, 2 outside it -- nnU-Net v2's
    ``ignore`` label (no loss there), which is what our bundle does with the FOV mask. The files go to ``workdir``
    (outside the repository), never next to the data.
    """
    from PIL import Image

    from monai_unetzoo.data.drive import build_drive_datalist

    raw = workdir / "nnUNet_raw" / DRIVE_NAME
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    cases = build_drive_datalist(dataset_dir, "training")
    for case in cases:
        Image.open(case["image"]).convert("RGB").save(raw / "imagesTr" / f"{case['case_id']}_0000.png")
        vessel = np.asarray(Image.open(case["label"]).convert("L")) > 127
        fov = np.asarray(Image.open(case["roi"]).convert("L")) > 127
        label = np.where(fov, vessel.astype(np.uint8), np.uint8(2))
        Image.fromarray(label).save(raw / "labelsTr" / f"{case['case_id']}.png")
    dataset_json = {"channel_names": {"0": "R", "1": "G", "2": "B"},
                    "labels": {"background": 0, "vessel": 1, "ignore": 2}, "numTraining": len(cases),
                    "file_ending": ".png", "name": "DRIVE training images (FOV outside = ignore)"}
    (raw / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return raw


def score_fov_files(triples: Sequence[tuple[Path, Path, Path]]) -> dict:
    """Vessel Dice inside the field of view of predicted vs reference 2D masks, per image and their mean.

    ``triples``: ``(prediction, reference, fov)`` image files (any value > 0 of a prediction is vessel: ours are
    0/255, nnU-Net's 0/1; reference and FOV > 127). The Dice is our bundle's validation metric,
    :func:`monai_unetzoo.metrics.compute_roi_metrics`, so both tools are scored by one code.
    """
    import torch
    from PIL import Image

    from monai_unetzoo.metrics import compute_roi_metrics

    per_image = []
    for pred_path, ref_path, fov_path in triples:
        pred = np.asarray(Image.open(pred_path).convert("L")) > 0
        ref = np.asarray(Image.open(ref_path).convert("L")) > 127
        fov = np.asarray(Image.open(fov_path).convert("L")) > 127
        if pred.shape != ref.shape:
            raise ValueError(f"{pred_path}: shape {pred.shape} differs from the reference {ref_path} {ref.shape}")
        as_batch = [torch.from_numpy(a)[None, None].float() for a in (pred, ref, fov)]
        per_image.append(float(compute_roi_metrics(*as_batch)["dice"][0, 0]))
    return {"per_image": [round(d, 4) for d in per_image], "mean": round(float(np.mean(per_image)), 4),
            "cases": len(per_image)}


def timed_run(cmd: Sequence[str], env: Mapping[str, str] | None = None, log: Path | None = None) -> dict:
    """Run ``cmd`` to completion (output to ``log``); ``{"seconds": wall time}``. Raises on failure, with the log's
    tail."""
    print("+", " ".join(shlex.quote(str(c)) for c in cmd), flush=True)
    t0 = time.perf_counter()
    with open(log or os.devnull, "w") as out:
        proc = subprocess.run([str(c) for c in cmd], env=dict(env) if env else None, stdout=out,
                              stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = Path(log).read_text(errors="replace")[-3000:] if log else ""
        raise RuntimeError(f"command failed with exit status {proc.returncode}: {cmd}\n{tail}")
    return {"seconds": round(seconds, 1)}


class NnunetRun:
    """nnU-Net v2's own commands on one data set in ``workdir`` (used by ``hippocampus_budget.py`` and
    ``drive_budget.py``): ``plan_and_preprocess`` once (timed; reused when ``preprocessing.json`` exists), our split
    as fold 0, then per budget ``train`` with ``nnUNetTrainerWallClock`` and ``predict`` with its defaults."""

    def __init__(self, workdir: Path, dataset_id: int, dataset_name: str, configuration: str):
        self.workdir, self.dataset_id, self.dataset_name, self.configuration = (workdir, dataset_id, dataset_name,
                                                                                configuration)

    def prepare(self, train: Sequence[dict], val: Sequence[dict]) -> dict:
        """Preprocessing record: ``{"seconds", "patch_size", "batch_size"}`` (the raw data must be written first)."""
        marker = self.workdir / "preprocessing.json"
        if marker.is_file():
            record = json.loads(marker.read_text())
        else:
            shutil.rmtree(self.workdir / "nnUNet_preprocessed", ignore_errors=True)
            record = timed_run([bin_path("nnUNetv2_plan_and_preprocess"), "-d", str(self.dataset_id), "-c",
                                self.configuration, "--verify_dataset_integrity"], nnunet_environment(self.workdir),
                               self.workdir / "plan_and_preprocess.log")
            marker.write_text(json.dumps(record))
        write_nnunet_splits(self.workdir, train, val, self.dataset_name)
        plans = self.workdir / "nnUNet_preprocessed" / self.dataset_name / "nnUNetPlans.json"
        conf = json.loads(plans.read_text())["configurations"][self.configuration]
        record.update(patch_size=conf["patch_size"], batch_size=conf["batch_size"])
        return record

    def train_and_predict(self, minutes: float, images: Path, preprocessing: dict) -> dict:
        """Train for ``minutes`` minus the preprocessing, predict ``images``; ``{"budget", "train_s", "predict_s",
        "predictions"}`` (``budget``: the trainer's ``benchmark_budget.json``)."""
        results = f"nnUNet_results_{minutes:g}min"
        env = nnunet_environment(self.workdir, results)
        env["UNETZOO_PEER_BUDGET_SECONDS"] = str(max(60.0, minutes * 60 - preprocessing["seconds"]))
        shutil.rmtree(self.workdir / results, ignore_errors=True)
        common = ["-tr", "nnUNetTrainerWallClock", "-device", "cpu"]
        train = timed_run([sys.executable, NNUNET_CLI, "train", str(self.dataset_id), self.configuration, "0", *common],
                          env, self.workdir / f"nnunet_train_{minutes:g}min.log")
        model = self.workdir / results / self.dataset_name / f"nnUNetTrainerWallClock__nnUNetPlans__{self.configuration}"
        out = self.workdir / f"nnunet_pred_{minutes:g}min"
        shutil.rmtree(out, ignore_errors=True)
        pred = timed_run([sys.executable, NNUNET_CLI, "predict", "-i", images, "-o", out, "-d", str(self.dataset_id),
                          "-c", self.configuration, "-f", "0", "-chk", "checkpoint_final.pth", *common], env,
                         self.workdir / f"nnunet_predict_{minutes:g}min.log")
        return {"budget": json.loads((model / "fold_0" / "benchmark_budget.json").read_text()),
                "train_s": train["seconds"], "predict_s": pred["seconds"], "predictions": out}


def machine_line() -> str:
    """CPU model, the flags that decide the bf16 path, cores and load: printed with every table."""
    from backends import cpu_flags  # benchmarks/backends.py: model + AVX-512 / AMX flags

    load = os.getloadavg() if hasattr(os, "getloadavg") else ()
    return f"{cpu_flags()} | {os.cpu_count()} CPUs | load {', '.join(f'{x:.1f}' for x in load)}"
