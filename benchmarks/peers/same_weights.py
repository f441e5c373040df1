"""Inference speed with the same weights: nnU-Net v2's ``nnUNetPredictor`` beside our ``SlidingWindowPredictor``.

Not a test. Both predictors run **our** trained hippocampus network (the bundle's ``ResUNet`` with the weights that
``hippocampus_budget.py`` trained in 15 minutes; nnU-Net's own 15-minute network did not segment yet, see
RESULTS.md). It plugs into nnU-Net through ``nnUNetPredictor.manual_initialization`` (the hook nnU-Net's trainer
uses for its final validation) with the plans of ``nnUNetv2_plan_and_preprocess`` for this data set: patch 40 x 56 x
40, which is also our bundle's patch. Both use step 0.5 (overlap 0.5) and Gaussian blending (sigma 1/8 of the
patch), on the same arrays, preprocessed once by the bundle's own preprocessing (RAS, 1 mm, z-score; what the
network was trained on):

* the 42 hippocampus validation cases, and
* ``example_ct`` (TotalSegmentator, 122 x 101 x 112 at 3 mm), z-scored on its own grid: a larger volume with many
  windows; the network is not trained for CT, so only the speed and the agreement of the two predictors mean
  anything there.

Each configuration runs in its own process (``--worker``), so its peak RSS is its own: nnU-Net with its defaults
(fp32 on CPU, mirroring on) and with mirroring off; ours in fp32 and in its default precision on this CPU (``auto``:
bf16 where the CPU has native bf16), with TTA and without. Mirroring, for both, is over the axes the network was
trained to be mirrored over (the bundle's ``mirror_axes``: left-right only; nnU-Net's all-axes default would swap
anterior and posterior for this network, and the two tools then agree at only 0.54 Dice on these cases). Ours gets
the network as the bundles and the CLI prepare it (channels-last weights) and its default of 4 windows per network
call (nnU-Net predicts one window at a time). Seconds per case exclude reading and preprocessing (identical for
everyone); label maps are compared by Dice per foreground class against nnU-Net's map of the same mirroring setting.

Usage::

    python benchmarks/peers/same_weights.py --json benchmarks/peers/same_weights.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _peers  # noqa: E402
from _common import print_table, write_json  # noqa: E402

PEERS_WORK = Path("/tmp/unetzoo_peers_hippocampus")  # hippocampus_budget.py's default --workdir
DEFAULT_CHECKPOINT = PEERS_WORK / "ours_15min" / "model_benchmark.pt"
DEFAULT_PLANS = PEERS_WORK / "nnUNet_preprocessed" / _peers.HIPPOCAMPUS_NAME
CONFIGS = {  # name -> (tool, mirroring, precision)
    "nnunet": ("nnU-Net nnUNetPredictor", True, "fp32"),
    "nnunet-nomirror": ("nnU-Net nnUNetPredictor", False, "fp32"),
    "ours-fp32": ("ours SlidingWindowPredictor", True, "fp32"),
    "ours-fp32-nomirror": ("ours SlidingWindowPredictor", False, "fp32"),
    "ours-auto": ("ours SlidingWindowPredictor", True, "auto"),
    "ours-auto-nomirror": ("ours SlidingWindowPredictor", False, "auto"),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="our hippocampus bundle's weights")
    p.add_argument("--plans", type=Path, default=DEFAULT_PLANS,
                   help="nnU-Net preprocessed data set folder (nnUNetPlans.json, dataset.json)")
    p.add_argument("--dataset_dir", type=Path, default=_peers.SHARED_DATA / "Task04_Hippocampus")
    p.add_argument("--ct", type=Path, default=_peers.SHARED_DATA / "TotalSegmentator_examples" / "example_ct.nii.gz")
    p.add_argument("--num_cases", type=int, default=None, help="only the first N validation cases")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/unetzoo_peers_same_weights"))
    p.add_argument("--summary_only", action="store_true",
                   help="only tabulate the results already in --workdir (e.g. after rerunning some --configs)")
    p.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def load_bundle(checkpoint: Path):
    """Our hippocampus bundle with ``checkpoint`` loaded: ``.network`` in eval mode and channels-last, as the CLI has
    it; ``.mirror_axes`` the axes it was trained to be mirrored over (left-right only)."""
    from monai_unetzoo.predict.bundle import load_prediction_bundle

    return load_prediction_bundle(_peers.REPO / "bundles" / "hippocampus", checkpoint)


def nnunet_predictor(network, plans: Path, mirroring: bool, mirror_axes: tuple[int, ...]):
    """``nnUNetPredictor`` (its defaults on CPU) running ``network`` through ``manual_initialization``."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(json.loads((plans / "nnUNetPlans.json").read_text()))
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, plans_manager.get_configuration("3d_fullres"), None,
                                    json.loads((plans / "dataset.json").read_text()), "nnUNetTrainer", mirror_axes)
    return predictor


def preprocess_inputs(args) -> list[dict]:
    """``[{"name", "array"}]``: the validation cases through the bundle's preprocessing, and example_ct z-scored;
    each saved as a (1, x, y, z) float32 ``.npy``."""
    import nibabel as nib
    from monai_unetzoo.volume_io import load_scan

    bundle = load_bundle(args.checkpoint)
    _, val = _peers.hippocampus_split(args.dataset_dir)
    out = args.workdir / "inputs"
    out.mkdir(parents=True, exist_ok=True)
    items = []
    for case in val[: args.num_cases]:
        image, _ = load_scan(case["image"])
        x = bundle.preprocessing({"image": image})["image"]
        items.append({"name": case["case_id"], "array": str(out / f"{case['case_id']}.npy")})
        np.save(items[-1]["array"], np.asarray(x, dtype=np.float32))
    if args.ct.is_file():
        ct = np.asarray(nib.load(str(args.ct)).dataobj, dtype=np.float32)
        ct = (ct - ct.mean()) / max(float(ct.std()), 1e-8)
        items.append({"name": "example_ct", "array": str(out / "example_ct.npy")})
        np.save(items[-1]["array"], ct[None])
    (args.workdir / "inputs.json").write_text(json.dumps(items))
    return items


def run_worker(args) -> None:
    """One configuration over every input: label maps to ``<workdir>/<config>/``, timings to ``result.json``."""
    import torch

    torch.set_num_threads(args.threads)
    tool, mirroring, precision = CONFIGS[args.worker]
    bundle = load_bundle(args.checkpoint)
    network = bundle.network
    if not args.worker.startswith("ours"):  # nnU-Net feeds contiguous windows: give it contiguous weights too
        network = network.to(memory_format=torch.contiguous_format)
    predictor = nnunet_predictor(network, args.plans, mirroring, tuple(bundle.mirror_axes))
    axes = tuple(predictor.allowed_mirroring_axes)
    patch = tuple(predictor.configuration_manager.patch_size)
    if args.worker.startswith("ours"):
        from monai_unetzoo.inference import SlidingWindowPredictor

        ours = SlidingWindowPredictor(roi_size=patch, overlap=0.5, mode="gaussian", sigma_scale=0.125,
                                      amp=None if precision == "fp32" else precision,
                                      tta_axes=axes if mirroring else None, activation="softmax")
    out = args.workdir / args.worker
    out.mkdir(parents=True, exist_ok=True)
    cases = []
    for item in json.loads((args.workdir / "inputs.json").read_text()):
        x = torch.from_numpy(np.load(item["array"]))
        t0 = time.perf_counter()
        if args.worker.startswith("ours"):
            labels = ours(x[None], network)[0].argmax(0)
        else:
            labels = predictor.predict_sliding_window_return_logits(x).argmax(0)
        seconds = time.perf_counter() - t0
        np.save(out / f"{item['name']}.npy", labels.to(torch.uint8).numpy())
        cases.append({"name": item["name"], "seconds": seconds, "shape": list(x.shape[1:])})
    result = {"config": args.worker, "tool": tool, "mirroring_axes": list(axes) if mirroring else [],
              "precision": precision, "patch": list(patch), "cases": cases, "threads": torch.get_num_threads(),
              "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    (out / "result.json").write_text(json.dumps(result, indent=2))


def dice_agreement(a: np.ndarray, b: np.ndarray, labels=(1, 2)) -> float:
    """Mean Dice over the foreground labels present in either map (1.0 when none is)."""
    scores = []
    for c in labels:
        pa, pb = a == c, b == c
        denom = pa.sum() + pb.sum()
        if denom:
            scores.append(2.0 * np.logical_and(pa, pb).sum() / denom)
    return float(np.mean(scores)) if scores else 1.0


def summarise(args, items) -> list[dict]:
    rows = []
    results = {c: json.loads((args.workdir / c / "result.json").read_text()) for c in args.configs}
    for c, r in results.items():
        ref = "nnunet" if CONFIGS[c][1] else "nnunet-nomirror"
        for group, names in (("hippocampus", [i["name"] for i in items if i["name"] != "example_ct"]),
                             ("example_ct", [i["name"] for i in items if i["name"] == "example_ct"])):
            cases = [x for x in r["cases"] if x["name"] in names]
            if not cases:
                continue
            agree = [dice_agreement(np.load(args.workdir / c / f"{n}.npy"), np.load(args.workdir / ref / f"{n}.npy"))
                     for n in names] if ref in results else []
            rows.append({"inputs": group, "config": c, "tool": r["tool"], "precision": r["precision"],
                         "mirror": ",".join(map(str, r["mirroring_axes"])) or "off",
                         "s_per_case": float(np.mean([x["seconds"] for x in cases])), "cases": len(cases),
                         "peak_rss_gib": r["peak_rss_gib"],
                         "agreement": float(np.min(agree)) if agree else None})
    for row in rows:
        base = next((x for x in rows if x["inputs"] == row["inputs"] and x["config"] ==
                     ("nnunet" if row["mirror"] != "off" else "nnunet-nomirror")), None)
        row["speedup"] = base["s_per_case"] / row["s_per_case"] if base else None
    return rows


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    machine = _peers.machine_line()
    print(machine, flush=True)
    if args.summary_only:
        items = json.loads((args.workdir / "inputs.json").read_text())
    else:
        items = preprocess_inputs(args)
    for config in ([] if args.summary_only else args.configs):
        cmd = [sys.executable, __file__, "--worker", config, "--checkpoint", str(args.checkpoint), "--plans",
               str(args.plans), "--threads", str(args.threads), "--workdir", str(args.workdir)]
        print("+", config, flush=True)
        subprocess.run(cmd, check=True, env=os.environ)
    rows = summarise(args, items)
    print(f"\n{machine}; weights {args.checkpoint}")
    print_table(rows, [("inputs", "inputs", "<s"), ("config", "config", "<s"), ("precision", "precision", "<s"),
                       ("mirror", "mirror axes", "<s"), ("s_per_case", "s/case", ">.3f"),
                       ("speedup", "x nnU-Net", ">.2f"), ("agreement", "min Dice vs nnU-Net", ">.4f"),
                       ("peak_rss_gib", "peak RSS GiB", ">.2f")])
    payload = {"machine": machine, "checkpoint": str(args.checkpoint), "rows": rows, "date": time.strftime("%Y-%m-%d %H:%M")}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
