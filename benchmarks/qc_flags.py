"""QC flag rates of ``unetzoo predict`` on the hippocampus bundle's validation split (not a test).

For a trained checkpoint: writes ``label_stats.json`` beside a copy of it (training labels of the bundle's fixed
split, validation confidence thresholds from the validation cases, with the bundle's own validation transforms and
inferer: what the bundle's ``LabelStatisticsWriter`` does at the end of training), then runs ``unetzoo predict`` on

* the validation images as they are (a flag here is a false flag), and
* the same images with the intensity inverted (``max + min - x``; a flag here is a detection),
* optionally more inputs (``--extra``, e.g. the TotalSegmentator CT examples: wrong modality for the MRI bundle),

and prints the fraction flagged per group and per flag code. Note: the confidence thresholds are derived from the
same validation cases (their worst value relaxed by a margin), so for the confidence flag the normal group is
in-sample; the volume, pieces and geometry references come from the training labels only.

Usage::

    python benchmarks/qc_flags.py --checkpoint /tmp/unetzoo_bench_hippocampus/model_benchmark.pt \
        --extra ../shared/data/TotalSegmentator_examples/example_ct_sm.nii.gz --json runs/qc_flags.json
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

from _common import write_json  # benchmarks/ is on sys.path when a script here runs

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "hippocampus"


def parse_args(argv=None) -> argparse.Namespace:
    base = Path(os.environ.get("UNETZOO_DATA_DIR", REPO.parent / "shared" / "data"))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="trained weights of bundles/hippocampus (a state_dict)")
    p.add_argument("--dataset_dir", default=str(base / "Task04_Hippocampus"))
    p.add_argument("--output_dir", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "unetzoo_qc_flags"))
    p.add_argument("--extra", nargs="*", default=[], help="more inputs predicted as their own group")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def write_reference(checkpoint: Path, dataset_dir: str, out: Path) -> Path:
    """Copy the checkpoint to ``out/model.pt`` and write ``out/label_stats.json`` beside it."""
    import torch
    from monai.bundle import ConfigParser

    from monai_unetzoo.label_statistics import write_label_statistics

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "train.json"))
    parser.update({"dataset_dir": dataset_dir, "output_dir": str(out), "bundle_root": str(BUNDLE)})
    parser.get_parsed_content("imports")
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(checkpoint, map_location="cpu"))
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(checkpoint, out / "model.pt")
    write_label_statistics(out / "label_stats.json", parser.get_parsed_content("train_datalist"),
                           parser.get_parsed_content("class_names"),
                           val_datalist=parser.get_parsed_content("val_datalist"), network=network,
                           preprocessing=parser.get_parsed_content("validate#preprocessing"),
                           inferer=parser.get_parsed_content("validate#inferer"),
                           device=parser.get_parsed_content("torch_device"))
    return out / "model.pt"


def inverted_copies(cases: list[dict], folder: Path) -> None:
    import nibabel as nib
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    for c in cases:
        img = nib.load(c["image"])
        data = np.asarray(img.dataobj, dtype=np.float32)
        nib.save(nib.Nifti1Image(data.max() + data.min() - data, img.affine), folder / Path(c["image"]).name)


def flag_rates(summary: Path) -> dict:
    with open(summary, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok"]
    codes = Counter(code for r in rows for code in r["qc_flags"].split(";") if code)
    flagged = sum(r["qc"] == "flagged" for r in rows)
    return {"cases": len(rows), "flagged": flagged, "fraction": flagged / max(1, len(rows)), "by_flag": dict(codes),
            "flagged_cases": {r["case"]: r["qc_reasons"] for r in rows if r["qc"] == "flagged"}}


def main(argv=None) -> dict:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    from monai_unetzoo.cli import main as cli_main
    from monai_unetzoo.data.msd import msd_datalists

    out = Path(args.output_dir)
    ckpt = write_reference(Path(args.checkpoint), args.dataset_dir, out / "reference")
    val = msd_datalists(args.dataset_dir)["validation"]
    groups = {"normal": out / "in_normal", "inverted": out / "in_inverted"}
    groups["normal"].mkdir(parents=True, exist_ok=True)
    for c in val:
        link = groups["normal"] / Path(c["image"]).name
        if not link.exists():
            os.symlink(c["image"], link)
    inverted_copies(val, groups["inverted"])
    if args.extra:
        groups["extra"] = out / "in_extra"
        groups["extra"].mkdir(parents=True, exist_ok=True)
        for e in args.extra:
            link = groups["extra"] / Path(e).name
            if not link.exists():
                os.symlink(Path(e).resolve(), link)
    result = {"checkpoint": str(Path(args.checkpoint).resolve()), "validation_cases": len(val)}
    for name, folder in groups.items():
        dest = out / f"pred_{name}"
        cli_main(["predict", "--bundle", str(BUNDLE), "--checkpoint", str(ckpt), "--input", str(folder), "--output",
                  str(dest), "--threads", str(args.threads), "--overwrite", "--quiet"])
        result[name] = flag_rates(dest / "summary.csv")
        print(f"{name:9s} {result[name]['flagged']:3d} / {result[name]['cases']:3d} flagged "
              f"({result[name]['fraction']:.1%})  by flag: {result[name]['by_flag']}")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
