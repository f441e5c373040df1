"""Trained bundle checkpoints: MONAI's out-of-the-box sliding window next to the bundle's predictor (issue 7).

Not a test: nothing asserts a time or a Dice. For one bundle (``--bundle drive`` or ``--bundle hippocampus``) and a
TRAINED checkpoint, every side below runs in this one process on the same validation inputs with the same weights
(MONAI's sides on the network as loaded, channels-first; ours on a channels-last copy, as the bundles build their
``network`` with ``network_memory_format``); per case all sides are warmed up (``--warmup`` calls each), then
timed ``--repeats`` times in round-robin order (so that a change of machine load hits every side alike) and the
median is reported.

Sides (each returns probabilities and a label map; the time covers both):

* ``monai``: what a MONAI user gets out of the box --
  ``monai.inferers.sliding_window_inference(x, roi_size=<bundle patch_size>, sw_batch_size=1, predictor=network,
  overlap=0.5, mode="gaussian")`` in fp32 under ``torch.no_grad()`` with the network in eval mode, then the bundle's
  activation AFTER stitching (sigmoid for DRIVE, softmax over channels for the hippocampus), then threshold 0.5 /
  ``torch.argmax(dim=1)``. This is the reference of every "vs monai" column.
* ``ours``: the bundle's own ``validate#inferer`` exactly as configured (a
  ``monai_unetzoo.inference.SlidingWindowPredictor``: the bundle's roi size, sw_batch_size, amp, activation per
  window, channels-last windows and weights, inference mode), then the same threshold, or for softmax the API's
  label step (``SlidingWindowPredictor.predict_labels``: ``scores_to_labels``, a class-by-class argmax with
  ``torch.argmax``'s answer that is 5-30x faster on CPU; for a hippocampus case 0.7 vs 10.6 ms of MONAI's ~190).
* ``ours-fp32`` / ``ours-auto``: a copy of that inferer with ``amp=None`` (fp32) / ``amp="auto"`` (bf16 autocast on
  CPUs with native bf16 and on CUDA, else fp32). A variant whose autocast dtype equals the bundle's is skipped (it
  would time the same thing twice); the printed note and the JSON say so.
* ``ours-tta`` (``--tta [AXIS ...]``): the bundle's inferer with mirroring TTA over the given spatial axes; bare
  ``--tta`` takes the bundle's ``inference.json`` ``tta_axes`` (hippocampus: [0], the only axis flipped in training;
  the anterior/posterior and superior/inferior axes are not mirror-symmetric for this network) or all axes where
  that is null (DRIVE, trained with flips and 90-degree rotations).
* opt-in (``--extra``), to take the disagreement apart:
  ``monai-roi``: as ``monai`` but with the bundle inferer's roi size (only differs when the bundle infers with a
  larger window than it trains on, as DRIVE does); ``monai-probs``: MONAI's function with the inferer's roi size and
  the activation applied INSIDE the window function, so that it blends probabilities as ``ours`` does (fp32,
  sw_batch_size 1). ``ours-fp32`` vs ``monai-probs`` then isolates the numerics of the speed-ups (batched windows,
  channels-last, inference mode) from the two deliberate differences (window size; blending probabilities rather
  than logits -- nnU-Net's choice, which changes the answer where windows overlap).

Columns: median seconds per case (and CPU seconds of the process in the same call, which shows how much of the wall
time the process actually ran on a shared machine), Mvoxels/s of input, speed ratio ``x monai`` (monai seconds /
side seconds), agreement = Dice between the side's label map and ``monai``'s per foreground class (sigmoid: each
channel; softmax: classes 1..C-1; a class empty in both maps counts as 1.0), ``max|dp|`` / ``mean|dp|`` = max /
mean absolute difference of the probabilities against ``monai``'s, and each side's Dice against the ground-truth
label (a class absent from the ground truth gives NaN and is left out of means, as MONAI's
``DiceMetric(ignore_empty=True)``). With ``--extra monai-probs`` every side is also compared with ``monai-probs``.
For DRIVE every Dice and ``|dp|`` is computed inside the field-of-view mask ``roi`` (the bundle's metric).
Aggregate rows: summed median seconds over the cases, total voxels / total seconds, per-class Dice averaged over
cases (plus the worst case's mean in the JSON), the largest ``max|dp|``, the mean ``mean|dp|``.

Data come from the bundle config itself (``monai.bundle.ConfigParser`` on ``bundles/<name>/train.json`` with
``dataset_dir`` set, ``output_dir`` a temporary folder, ``device`` cpu): the network is ``network_def`` loaded with
the checkpoint (a bare state dict or a dict with ``"model"``/``"network"``/``"state_dict"``), the inputs are the
items of ``validate#dataset`` (DRIVE: the 4 validation images, keys image (3, H, W), label, roi; hippocampus: the
validation split of MSD Task04, 42 cases, ``--max_cases N`` for the first N).

    python benchmarks/trained_agreement.py --bundle drive --checkpoint models/model.pt --json drive_agree.json
    python benchmarks/trained_agreement.py --bundle hippocampus --checkpoint models/model.pt --max_cases 10
    python benchmarks/trained_agreement.py --bundle drive --checkpoint m.pt \
        --set 'network_def#features=[8,16,32,64,128]'
    python benchmarks/trained_agreement.py --bundle drive --checkpoint m.pt --extra monai-roi monai-probs --tta
    python benchmarks/trained_agreement.py --bundle hippocampus --checkpoint m.pt --tta 0 --max_cases 5
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

BUNDLES: dict[str, dict[str, Any]] = {
    "drive": {"config": C.REPO_ROOT / "bundles" / "drive" / "train.json", "data": C.SHARED_DATA / "DRIVE",
              "fov_key": "roi"},
    "hippocampus": {"config": C.REPO_ROOT / "bundles" / "hippocampus" / "train.json",
                    "data": C.SHARED_DATA / "Task04_Hippocampus", "fov_key": None},
}
EXTRA_SIDES = ("monai-roi", "monai-probs")


# ---------------------------------------------------------------------------------------------------------------
# arguments


def parse_set(text: str) -> tuple[str, Any]:
    """``KEY=JSON`` -> (KEY, value); a value that is not JSON is kept as a string (e.g. a ``$`` expression)."""
    key, sep, raw = text.partition("=")
    if not key or not sep:
        raise argparse.ArgumentTypeError(f"--set expects KEY=JSON (e.g. network_def#features=[8,16,32]), got {text!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", choices=sorted(BUNDLES), required=True)
    p.add_argument("--checkpoint", required=True, help="trained weights matching the bundle's network_def")
    p.add_argument("--dataset_dir", default=None,
                   help="default: ../shared/data/DRIVE or ../shared/data/Task04_Hippocampus")
    p.add_argument("--set", dest="sets", type=parse_set, action="append", default=[], metavar="KEY=JSON",
                   help="bundle config override, repeatable (e.g. network_def#features=[8,16,32,64,128])")
    p.add_argument("--max_cases", type=int, default=None, help="only the first N validation cases")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per side and case (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per side and case before timing")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--tta", nargs="*", type=int, default=None, metavar="AXIS",
                   help="add ours-tta: the bundle inferer with mirroring TTA over these spatial axes (0-based); bare "
                        "--tta: the bundle's inference.json tta_axes, or all axes where that is null")
    p.add_argument("--extra", nargs="*", choices=EXTRA_SIDES, default=[], help="opt-in MONAI sides (see the docstring)")
    p.add_argument("--json", default=None, help="write rows, aggregate and machine info here")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        p.error("--repeats and --threads must be >= 1 and --warmup >= 0")
    if args.max_cases is not None and args.max_cases < 1:
        p.error("--max_cases must be >= 1")
    return args


# ---------------------------------------------------------------------------------------------------------------
# bundle


def load_bundle(args: argparse.Namespace, output_dir: str) -> dict[str, Any]:
    """Network (eval mode, checkpoint loaded), the configured inferer, patch size and validation items."""
    from monai.bundle import ConfigParser

    from monai_unetzoo.inference import SlidingWindowPredictor

    spec = BUNDLES[args.bundle]
    dataset_dir = Path(args.dataset_dir) if args.dataset_dir else spec["data"]
    if not dataset_dir.is_dir():
        raise FileNotFoundError(
            f"{dataset_dir}: dataset folder of the {args.bundle} bundle does not exist (--dataset_dir)")
    parser = ConfigParser()
    parser.read_config(str(spec["config"]))
    parser.update({"dataset_dir": str(dataset_dir), "output_dir": output_dir, "device": "cpu"})
    parser.update(dict(args.sets))
    if args.max_cases is not None:
        parser["validate#dataset#data"] = f"$@val_datalist[:{int(args.max_cases)}]"

    network = parser.get_parsed_content("network_def")
    C.load_weights(network, args.checkpoint)
    network.eval()
    inferer = parser.get_parsed_content("validate#inferer")
    if not isinstance(inferer, SlidingWindowPredictor):
        raise TypeError(
            f"{spec['config']}: validate#inferer is {type(inferer).__name__}, expected SlidingWindowPredictor")
    if inferer.activation not in ("sigmoid", "softmax"):
        raise ValueError(f"{spec['config']}: validate#inferer has activation={inferer.activation!r}; "
                         "this script compares sigmoid or softmax bundles")
    patch_size = [int(s) for s in parser.get_parsed_content("patch_size")]
    # the bundle's own TTA choice (inference.json): mirroring only along axes the network was trained to be
    # symmetric in (hippocampus: axis 0 only; mirroring all three axes wrecks its anterior/posterior labels)
    inference_json = spec["config"].with_name("inference.json")
    tta = json.loads(inference_json.read_text()).get("tta_axes") if inference_json.is_file() else None
    bundle_tta_axes = (tta,) if isinstance(tta, int) else tuple(int(a) for a in tta) if isinstance(tta, list) else ()
    dataset = parser.get_parsed_content("validate#dataset")
    items = [dataset[i] for i in range(len(dataset))]
    if not items:
        raise ValueError(f"{dataset_dir}: the {args.bundle} bundle's validation split is empty")
    return {"network": network, "inferer": inferer, "patch_size": patch_size, "items": items,
            "dataset_dir": str(dataset_dir), "network_def": parser.get("network_def"),
            "bundle_tta_axes": bundle_tta_axes}


# ---------------------------------------------------------------------------------------------------------------
# sides


def _plain(t: Any) -> Any:
    """The plain tensor behind a MetaTensor (no copy)."""
    return t.as_tensor() if hasattr(t, "as_tensor") else t


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "") if dtype is not None else "fp32"


def activate(scores: Any, activation: str) -> Any:
    return scores.sigmoid() if activation == "sigmoid" else scores.softmax(dim=1)


def to_labels(probs: Any, activation: str) -> Any:
    """Sigmoid: (B, C, *sp) bool ``probs > 0.5``; softmax: (B, *sp) ``torch.argmax`` class indices. MONAI's sides
    (what a MONAI user writes); our sides take the same threshold but ``scores_to_labels`` for the argmax."""
    p = _plain(probs)
    return p > 0.5 if activation == "sigmoid" else p.argmax(dim=1)


def build_sides(args: argparse.Namespace, b: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """[{name, amp, autocast, roi, sw_batch_size, fn: x -> probs}], notes about skipped variants."""
    import torch
    from monai.inferers import sliding_window_inference

    from monai_unetzoo.inference import channels_last_network, resolve_autocast_dtype, scores_to_labels

    net, inferer, act = b["network"], b["inferer"], b["inferer"].activation
    # the bundles build their network with channels-last weights (``network_memory_format``), our predictor's
    # layout; MONAI's sides keep the network as loaded (channels-first), as a MONAI user has it. Same weights.
    net_ours = channels_last_network(copy.deepcopy(net))
    cpu = torch.device("cpu")
    infer_roi = list(inferer.roi_size) if not isinstance(inferer.roi_size, int) else [inferer.roi_size]

    def monai_side(roi: list[int], probs_inside: bool) -> Callable[[Any], Any]:
        def predictor(w: Any) -> Any:
            return activate(net(w), act)

        def fn(x: Any) -> tuple[Any, Any]:
            with torch.no_grad():
                if probs_inside:
                    probs = sliding_window_inference(x, roi_size=roi, sw_batch_size=1, predictor=predictor,
                                                     overlap=0.5, mode="gaussian")
                else:
                    logits = sliding_window_inference(x, roi_size=roi, sw_batch_size=1, predictor=net, overlap=0.5,
                                                      mode="gaussian")
                    probs = activate(logits, act)
            return probs, to_labels(probs, act)

        return fn

    def ours_side(inf: Any) -> Callable[[Any], Any]:
        def fn(x: Any) -> tuple[Any, Any]:
            probs = inf(x, net_ours)
            if act == "sigmoid":
                return probs, to_labels(probs, act)
            return probs, scores_to_labels(probs, mode="argmax")[:, 0]  # the API's label step (predict_labels)

        return fn

    def describe(name: str, amp: Any, roi: list[int], sw: int, fn: Callable[[Any], Any]) -> dict[str, Any]:
        dtype = resolve_autocast_dtype(amp, cpu)
        return {"name": name, "amp": str(amp), "autocast": _dtype_name(dtype),
                "roi": "x".join(map(str, roi)), "sw_batch_size": sw, "fn": fn}

    sides = [describe("monai", None, b["patch_size"], 1, monai_side(b["patch_size"], False))]
    if "monai-roi" in args.extra:
        sides.append(describe("monai-roi", None, infer_roi, 1, monai_side(infer_roi, False)))
    if "monai-probs" in args.extra:
        sides.append(describe("monai-probs", None, infer_roi, 1, monai_side(infer_roi, True)))
    sides.append(describe("ours", inferer.amp, infer_roi, inferer.sw_batch_size, ours_side(inferer)))
    notes = []
    bundle_dtype = resolve_autocast_dtype(inferer.amp, cpu)
    for name, amp in (("ours-fp32", None), ("ours-auto", "auto")):
        if resolve_autocast_dtype(amp, cpu) == bundle_dtype:
            notes.append(f"{name} skipped: the bundle's inferer (amp={inferer.amp!r}) already runs "
                         f"{_dtype_name(bundle_dtype)} here, so it is the 'ours' row")
            continue
        variant = copy.copy(inferer)
        variant.amp = amp
        sides.append(describe(name, amp, infer_roi, inferer.sw_batch_size, ours_side(variant)))
    if args.tta is not None:
        axes = tuple(args.tta) if args.tta else b["bundle_tta_axes"]
        where = "--tta" if args.tta else "inference.json tta_axes"
        if not axes:
            axes, where = tuple(range(len(infer_roi))), "all spatial axes (inference.json tta_axes is null)"
        variant = copy.copy(inferer)
        variant.tta_axes = axes
        side = describe("ours-tta", inferer.amp, infer_roi, inferer.sw_batch_size, ours_side(variant))
        side["tta_axes"] = list(axes)
        sides.append(side)
        notes.append(f"ours-tta mirrors spatial axes {list(axes)} ({where}; {2 ** len(set(axes))} passes per window)")
    return sides, notes


# ---------------------------------------------------------------------------------------------------------------
# metrics (plain numpy on the label maps and probabilities)


def foreground_masks(labels: Any, activation: str, num_channels: int) -> list[Any]:
    """Boolean (*spatial) mask per foreground class of a batch-1 label map from :func:`to_labels`."""
    arr = _plain(labels)[0].cpu().numpy()
    if activation == "sigmoid":
        return [arr[c] for c in range(num_channels)]
    return [arr == c for c in range(1, num_channels)]


def truth_masks(label: Any, activation: str, num_channels: int) -> list[Any]:
    """Boolean (*spatial) mask per foreground class of the ground truth (C_label, *spatial)."""
    import numpy as np

    arr = np.asarray(_plain(label).cpu().numpy(), dtype=np.float32)
    if activation == "sigmoid":
        if arr.shape[0] != num_channels:
            raise ValueError(f"label has {arr.shape[0]} channels but the network outputs {num_channels} (sigmoid)")
        return [arr[c] > 0.5 for c in range(num_channels)]
    classes = np.rint(arr[0]).astype(np.int64)
    return [classes == c for c in range(1, num_channels)]


def dice(pred: Any, ref: Any, fov: Any | None, both_empty: float) -> float:
    """``2|P & R| / (|P| + |R|)`` inside ``fov``; ``both_empty`` when both are empty (1.0 for agreement).
    NaN when the reference is empty and ``both_empty`` is NaN (ground truth: MONAI's ``ignore_empty``)."""
    if fov is not None:
        pred, ref = pred & fov, ref & fov
    n_ref = int(ref.sum())
    if n_ref == 0 and math.isnan(both_empty):
        return math.nan
    total = int(pred.sum()) + n_ref
    return both_empty if total == 0 else 2.0 * int((pred & ref).sum()) / total


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def _per_class(values: list[float]) -> str:
    return "/".join("nan" if math.isnan(v) else f"{v:.4f}" for v in values)


# ---------------------------------------------------------------------------------------------------------------
# run


def case_name(item: dict[str, Any], index: int) -> str:
    meta = getattr(item["image"], "meta", None) or {}
    name = meta.get("filename_or_obj")
    return Path(str(name)).name if name else f"case{index}"


def run_case(sides: list[dict[str, Any]], x: Any, repeats: int, warmup: int) -> dict[str, Any]:
    """Warm up every side, then time ``repeats`` round-robin calls; returns {name: (timing, probs, labels)}."""
    for _ in range(warmup):
        for s in sides:
            s["fn"](x)
    walls: dict[str, list[float]] = {s["name"]: [] for s in sides}
    cpus: dict[str, list[float]] = {s["name"]: [] for s in sides}
    outs: dict[str, tuple[Any, Any]] = {}
    for _ in range(repeats):
        for s in sides:
            c0, t0 = time.process_time(), time.perf_counter()
            probs, labels = s["fn"](x)
            walls[s["name"]].append(time.perf_counter() - t0)
            cpus[s["name"]].append(time.process_time() - c0)
            outs[s["name"]] = (probs, labels)
    return {n: ({"seconds": statistics.median(walls[n]), "all_seconds": walls[n],
                 "cpu_seconds": statistics.median(cpus[n])}, *outs[n]) for n in walls}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import numpy as np
    import torch

    import monai_unetzoo

    torch.set_num_threads(args.threads)
    machine = C.machine_info(torch.device("cpu"))
    machine["monai_unetzoo"] = getattr(monai_unetzoo, "__version__", None)
    machine["omp_num_threads_env"] = os.environ.get("OMP_NUM_THREADS")

    with tempfile.TemporaryDirectory(prefix="trained_agreement_") as tmp:
        b = load_bundle(args, tmp)
    act = b["inferer"].activation
    sides, notes = build_sides(args, b)
    fov_key = BUNDLES[args.bundle]["fov_key"]
    print(f"bundle {args.bundle}: {len(b['items'])} validation case(s) from {b['dataset_dir']}; checkpoint "
          f"{args.checkpoint}; activation {act}; monai roi {b['patch_size']} (patch_size), bundle inferer "
          f"{type(b['inferer']).__name__}(roi {list(b['inferer'].roi_size)}, sw_batch_size "
          f"{b['inferer'].sw_batch_size}, amp {b['inferer'].amp!r}); threads {torch.get_num_threads()}; "
          f"native bf16 {machine['cpu_native_bf16']}; load average {machine['loadavg_1min']}", flush=True)
    for note in notes:
        print("note:", note, flush=True)

    rows: list[dict[str, Any]] = []
    for i, item in enumerate(b["items"]):
        x = item["image"][None]  # (1, C_in, *spatial), as a batch-1 DataLoader hands it to the evaluator
        voxels = int(np.prod(x.shape[2:]))
        fov = (_plain(item[fov_key])[0].cpu().numpy() > 0.5) if fov_key else None
        results = run_case(sides, x, args.repeats, args.warmup)
        ref_t, ref_p, ref_l = results["monai"]
        ref_probs = _plain(ref_p)[0].float().cpu().numpy()
        num_channels = ref_probs.shape[0]
        ref_masks = foreground_masks(ref_l, act, num_channels)
        if "monai-probs" in results:  # second reference: MONAI blending probabilities at the inferer's roi
            mp_probs = _plain(results["monai-probs"][1])[0].float().cpu().numpy()
            mp_masks = foreground_masks(results["monai-probs"][2], act, num_channels)
        gt = truth_masks(item["label"], act, num_channels) if "label" in item else None
        name = case_name(item, i)
        for s in sides:
            t, p, lab = results[s["name"]]
            probs = _plain(p)[0].float().cpu().numpy()
            diff = np.abs(probs - ref_probs)
            diff_in = diff[:, fov] if fov is not None else diff
            masks = foreground_masks(lab, act, num_channels)
            agree = [dice(m, r, fov, 1.0) for m, r in zip(masks, ref_masks)]
            vs_gt = [dice(m, g, fov, math.nan) for m, g in zip(masks, gt)] if gt is not None else []
            if "monai-probs" in results:
                d_mp = np.abs(probs - mp_probs)
                extra = {"dice_vs_monai_probs": [dice(m, r, fov, 1.0) for m, r in zip(masks, mp_masks)],
                         "max_abs_dprob_vs_monai_probs": float((d_mp[:, fov] if fov is not None else d_mp).max())}
                extra["dice_vs_monai_probs_mean"] = _nanmean(extra["dice_vs_monai_probs"])
            else:
                extra = {}
            rows.append({
                "case": name, "side": s["name"], "amp": s["amp"], "autocast": s["autocast"], "roi": s["roi"],
                "sw_batch_size": s["sw_batch_size"], "voxels": voxels, **t,
                "mvox_s": voxels / t["seconds"] / 1e6, "x_monai": ref_t["seconds"] / t["seconds"],
                "dice_vs_monai": agree, "dice_vs_monai_mean": _nanmean(agree),
                "dice_vs_monai_cls": _per_class(agree),
                "max_abs_dprob": float(diff_in.max()), "mean_abs_dprob": float(diff_in.mean()),
                "dice_vs_gt": vs_gt, "dice_vs_gt_mean": _nanmean(vs_gt), "dice_vs_gt_cls": _per_class(vs_gt),
                **extra,
            })
        line = ", ".join(f"{r['side']} {r['seconds']:.2f}s" for r in rows[-len(sides):])
        print(f"[{i + 1}/{len(b['items'])}] {name}: {line}", flush=True)

    aggregate = []
    ref_total = sum(r["seconds"] for r in rows if r["side"] == "monai")
    for s in sides:
        mine = [r for r in rows if r["side"] == s["name"]]
        total = sum(r["seconds"] for r in mine)
        n_cls = len(mine[0]["dice_vs_monai"])
        agree = [_nanmean([r["dice_vs_monai"][c] for r in mine]) for c in range(n_cls)]
        vs_gt = [_nanmean([r["dice_vs_gt"][c] for r in mine]) for c in range(len(mine[0]["dice_vs_gt"]))]
        aggregate.append({
            "case": f"ALL ({len(mine)})", "side": s["name"], "amp": s["amp"], "autocast": s["autocast"],
            "roi": s["roi"], "sw_batch_size": s["sw_batch_size"], "voxels": sum(r["voxels"] for r in mine),
            "seconds": total, "cpu_seconds": sum(r["cpu_seconds"] for r in mine),
            "mvox_s": sum(r["voxels"] for r in mine) / total / 1e6, "x_monai": ref_total / total,
            "dice_vs_monai": agree, "dice_vs_monai_mean": _nanmean(agree), "dice_vs_monai_cls": _per_class(agree),
            "min_case_dice_vs_monai": min(r["dice_vs_monai_mean"] for r in mine),
            "max_abs_dprob": max(r["max_abs_dprob"] for r in mine),
            "mean_abs_dprob": _nanmean([r["mean_abs_dprob"] for r in mine]),
            "dice_vs_gt": vs_gt, "dice_vs_gt_mean": _nanmean(vs_gt), "dice_vs_gt_cls": _per_class(vs_gt),
        })
        if "dice_vs_monai_probs_mean" in mine[0]:
            aggregate[-1]["dice_vs_monai_probs_mean"] = _nanmean([r["dice_vs_monai_probs_mean"] for r in mine])
            aggregate[-1]["max_abs_dprob_vs_monai_probs"] = max(r["max_abs_dprob_vs_monai_probs"] for r in mine)

    columns = [("case", "case", "<"), ("side", "side", "<"), ("autocast", "autocast", "<"), ("roi", "roi", "<"),
               ("sw_batch_size", "sw", ">"), ("seconds", "s (median)", ">.3f"), ("cpu_seconds", "cpu_s", ">.2f"),
               ("mvox_s", "Mvox/s", ">.3f"), ("x_monai", "x monai", ">.2f"),
               ("dice_vs_monai_mean", "Dice vs monai", ">.4f"), ("dice_vs_monai_cls", "per class", "<"),
               ("max_abs_dprob", "max|dp|", ">.2e"), ("mean_abs_dprob", "mean|dp|", ">.1e"),
               ("dice_vs_gt_mean", "Dice vs GT", ">.4f"),
               ("dice_vs_gt_cls", "GT per class", "<")]
    if "monai-probs" in args.extra:
        columns += [("dice_vs_monai_probs_mean", "Dice vs m-probs", ">.4f"),
                    ("max_abs_dprob_vs_monai_probs", "max|dp| m-probs", ">.2e")]
    where = " inside the FOV mask" if fov_key else ""
    print(f"\nper case (Dice and |dp|{where}; a class empty in both maps agrees with 1.0):")
    C.print_table(rows, columns)
    print(f"\naggregate over {len(b['items'])} case(s) (seconds summed, Dice averaged per class over cases):")
    C.print_table(aggregate, columns)
    machine["loadavg_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"load average 1 min: {machine['loadavg_1min']} at start, {machine['loadavg_1min_end']} at end")
    payload = {
        "bundle": args.bundle, "checkpoint": str(args.checkpoint), "dataset_dir": b["dataset_dir"],
        "network_def": b["network_def"], "overrides": dict(args.sets), "max_cases": args.max_cases,
        "repeats": args.repeats, "warmup": args.warmup, "activation": act, "fov_key": fov_key,
        "monai_roi": b["patch_size"], "sides": [{k: v for k, v in s.items() if k != "fn"} for s in sides],
        "notes": notes, "machine": machine, "rows": rows, "aggregate": aggregate,
    }
    C.write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
