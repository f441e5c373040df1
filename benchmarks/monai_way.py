"""The reference of issue 19's speed target: a folder of cases predicted the way a MONAI user writes it.

For each case of ``--input`` this does the work ``unetzoo predict`` does, with MONAI's own building blocks at their
defaults: the bundle's ``inference.json`` ``preprocessing`` (``LoadImaged`` ...), the bundle's ``network_def`` with
the checkpoint's weights, channels-first, fp32, eval mode under ``torch.no_grad()``;
``monai.inferers.sliding_window_inference(x, roi_size=<the bundle inferer's roi_size>, sw_batch_size=1,
overlap=0.5, mode="gaussian")`` (MONAI's default batch of one window; the bundle's window and nnU-Net's overlap and
weighting so that the windows are the same); then MONAI's post-transforms ``Activationsd`` (softmax / sigmoid of the
stitched logits), ``AsDiscreted`` (argmax / threshold 0.5), outside a DRIVE field of view set to background,
``Invertd`` (nearest) back to the input grid and ``SaveImaged`` into ``--output``. Per case it writes a row of
``summary.csv`` (``case``, ``seconds``: read -> write of that case). No mirroring TTA (run the CLI with
``--no-tta`` for the same work).

    python benchmarks/monai_way.py --bundle hippocampus --checkpoint model.pt --input in/ --output out/ --threads 2
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, choices=["hippocampus", "drive"])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", required=True, help="a folder of cases (NIfTI volumes, DRIVE TIFFs)")
    p.add_argument("--output", required=True)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def load_parts(bundle: str, checkpoint: str):
    """(preprocessing, network, roi_size, activation, threshold) from the bundle's inference.json."""
    from monai.bundle import ConfigParser

    sys.path.insert(0, str(REPO / "benchmarks"))
    from _common import load_weights

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "inference.json"))
    parser["bundle_root"] = str(REPO / "bundles" / bundle)
    parser.get_parsed_content("imports")
    network = parser.get_parsed_content("network_def")
    load_weights(network, checkpoint)
    inferer = parser.get_parsed_content("inferer")
    return (parser.get_parsed_content("preprocessing"), network.eval(), tuple(inferer.roi_size),
            parser["inferer"]["activation"], float(parser.get_parsed_content("threshold")))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import Activationsd, AsDiscreted, Invertd, SaveImaged

    torch.set_num_threads(args.threads)
    preprocessing, network, roi_size, activation, threshold = load_parts(args.bundle, args.checkpoint)
    softmax = activation == "softmax"
    post = [Activationsd("pred", softmax=softmax, sigmoid=not softmax),
            AsDiscreted("pred", argmax=softmax, threshold=None if softmax else threshold)]
    invert = Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=True)
    save = SaveImaged("pred", output_dir=args.output, output_postfix="seg", separate_folder=False,
                      output_ext=".nii.gz" if args.bundle == "hippocampus" else ".png", output_dtype="uint8",
                      scale=None if softmax else 255, print_log=False, resample=False)
    if args.bundle == "drive":  # the bundle reads its photographs with reverse_indexing=False: write them alike
        save.set_options(write_kwargs={"reverse_indexing": False})
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in sorted(Path(args.input).iterdir()):
        start = time.perf_counter()
        data = preprocessing({"image": str(path)})
        with torch.no_grad():
            data["pred"] = sliding_window_inference(data["image"][None], roi_size, 1, network, overlap=0.5,
                                                    mode="gaussian")[0]
        for t in post:
            data = t(data)
        if data.get("roi") is not None:  # DRIVE: background outside the field of view, as the bundle writes it
            data["pred"] = data["pred"] * (data["roi"] > 0)
        save(invert(data))
        rows.append({"case": path.name, "seconds": f"{time.perf_counter() - start:.3f}"})
        print(f"{path.name}: {rows[-1]['seconds']} s", file=sys.stderr, flush=True)
    with open(out / "summary.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["case", "seconds"])
        writer.writeheader()
        writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
