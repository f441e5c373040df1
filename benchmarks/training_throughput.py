"""Training throughput: the DRIVE bundle's training loop next to a plain PyTorch loop (issue 7, 2).

Both sides run in this one process on the same components, parsed from ``bundles/drive/train.json``:

* ``bundle``: the bundle's ``train#trainer`` (MONAI ``SupervisedTrainer`` with the bundle's ``DataLoader``,
  ``PrepareBatchWithROI``, ``MaskedDiceCELoss``, AdamW), with ``train#handlers`` emptied -- validation,
  checkpointing, TensorBoard and LR scheduling are not the training loop and would dominate a short run;
* ``plain``: ``for batch in torch.utils.data.DataLoader(...)``: prepare_batch, zero_grad, forward, loss, backward,
  step -- the same dataset object (the bundle's cached ``train#dataset``, same random patch transforms), batch size,
  ``num_workers``, collate function (``monai.data.list_data_collate``: ``patches_per_image`` patches per image),
  network definition, initial weights, loss and optimiser settings;
* ``plain-bf16``: the plain loop with the forward and loss under ``torch.autocast(bfloat16)`` (only where it pays:
  CUDA, or a CPU with native bf16) -- throughput only; whether bf16 training keeps validation Dice within 0.005
  of fp32 needs full trainings and is not measured here.

Rounds alternate the sides (bundle, plain, plain-bf16, bundle, ...) so that load changes on a shared machine hit
both; each run starts from the same initial weights. samples/s counts patches after the first iteration of a run
(warm-up: worker start, oneDNN kernel creation); ``wait %`` is the share of that wall time spent waiting for the
next batch (ignite ``GET_BATCH_STARTED`` -> ``GET_BATCH_COMPLETED`` in the trainer; time blocked in
``next(iterator)`` in the plain loop). The figures are medians over ``--rounds``.

    python benchmarks/training_throughput.py --quick            # 1 round, 1 epoch of 8 iterations, synthetic data
    python benchmarks/training_throughput.py --json train.json  # 3 rounds x 2 epochs on synthetic DRIVE
    python benchmarks/training_throughput.py --dataset-dir ../shared/data/DRIVE --num-workers 2

Data: the bundle's default synthetic DRIVE (generated in a temporary folder), or real DRIVE with ``--dataset-dir``.
Not a test: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

BUNDLE = C.REPO_ROOT / "bundles" / "drive"


def _parse_bundle(args, tmp: str):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "train.json"))
    parser["bundle_root"] = str(BUNDLE)
    parser["output_dir"] = tmp
    parser["dataset_dir"] = args.dataset_dir
    parser["epochs"] = args.epochs
    parser["passes_per_epoch"] = args.passes_per_epoch
    parser["num_workers"] = args.num_workers
    parser["device"] = str(args.torch_device)
    parser["amp"] = False
    parser["train#handlers"] = []  # no validation / checkpoints / TensorBoard / LR schedule: only the loop
    return parser


def run_bundle(parser, net_init: dict, epochs: int) -> dict:
    import torch
    from ignite.engine import Events
    from monai.utils import set_determinism

    set_determinism(seed=0)
    trainer = parser.get_parsed_content("train#trainer", instantiate=True, lazy=False)
    net = trainer.network
    net.load_state_dict(net_init)  # in place: the freshly built optimiser (no step taken yet) keeps its tensors
    rec = {"wait": [], "iter_end": [], "n": []}
    t_get: list[float] = [0.0]

    @trainer.on(Events.GET_BATCH_STARTED)
    def _get_started(_):
        t_get[0] = time.perf_counter()

    @trainer.on(Events.GET_BATCH_COMPLETED)
    def _get_completed(_):
        rec["wait"].append(time.perf_counter() - t_get[0])

    @trainer.on(Events.ITERATION_COMPLETED)
    def _iter_done(engine):
        rec["iter_end"].append(time.perf_counter())
        b = engine.state.batch  # a dict batch, or the list of per-patch dicts after MONAI's decollate
        rec["n"].append(int(b["image"].shape[0]) if isinstance(b, dict) else len(b))

    t0 = time.perf_counter()
    trainer.run()
    total = time.perf_counter() - t0
    out = _summarise(rec, total)
    del trainer
    torch.set_grad_enabled(True)
    return out


def run_plain(parser, net_init: dict, epochs: int, device, autocast_dtype=None) -> dict:
    import torch
    from monai.data import list_data_collate
    from monai.utils import set_determinism

    set_determinism(seed=0)
    dataset = parser.get_parsed_content("train#dataset")  # the same (cached) dataset object as the bundle's
    nw = int(parser.get_parsed_content("num_workers"))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=int(parser.get_parsed_content("images_per_batch")), shuffle=True, drop_last=True,
        num_workers=nw, persistent_workers=nw > 0, collate_fn=list_data_collate,
    )
    net = parser.get_parsed_content("network_def", instantiate=True, lazy=False).to(device)
    net.load_state_dict(net_init)
    bundle_opt = parser.get_parsed_content("optimizer")  # same class and the bundle's own arguments
    opt_kwargs = {k: parser.get_parsed_content(f"optimizer#{k}") for k in parser["optimizer"] if k not in ("_target_", "params")}
    opt = type(bundle_opt)(net.parameters(), **opt_kwargs)
    loss_fn = parser.get_parsed_content("loss", instantiate=True, lazy=False)
    prepare = parser.get_parsed_content("train#prepare_batch", instantiate=True, lazy=False)
    net.train()
    rec = {"wait": [], "iter_end": [], "n": []}
    t0 = time.perf_counter()
    for _ in range(epochs):
        it = iter(loader)
        while True:
            tw = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            rec["wait"].append(time.perf_counter() - tw)
            image, label = prepare(batch, device)
            opt.zero_grad(set_to_none=True)
            if autocast_dtype is not None:
                with torch.autocast(device_type=device.type, dtype=autocast_dtype):
                    loss = loss_fn(net(image), label)
            else:
                loss = loss_fn(net(image), label)
            loss.backward()
            opt.step()
            C.sync(device)
            rec["iter_end"].append(time.perf_counter())
            rec["n"].append(int(image.shape[0]))
    total = time.perf_counter() - t0
    return _summarise(rec, total)


def _summarise(rec: dict, total: float) -> dict:
    n_it = len(rec["iter_end"])
    if n_it < 2:
        raise RuntimeError(f"only {n_it} training iteration(s) ran: raise --epochs or --passes-per-epoch")
    # steady state: from the end of the first iteration to the end of the last
    span = rec["iter_end"][-1] - rec["iter_end"][0]
    samples = sum(rec["n"][1:])
    wait = sum(rec["wait"][1:])
    return {
        "iterations": n_it,
        "samples": sum(rec["n"]),
        "total_s": total,
        "steady_s": span,
        "samples_per_s": samples / span,
        "wait_fraction": wait / span,
        "first_iteration_s": total - span,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 round, 1 epoch, passes_per_epoch 2 (8 iterations)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    ap.add_argument("--dataset-dir", default="synthetic", help="'synthetic' (bundle default) or a DRIVE folder")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (default 2; 1 --quick)")
    ap.add_argument("--passes-per-epoch", type=int, default=None, help="bundle's passes_per_epoch (default 4; 2 --quick)")
    ap.add_argument("--num-workers", type=int, default=1, help="DataLoader workers (bundle default 1)")
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3; 1 --quick)")
    ap.add_argument("--no-bf16", action="store_true", help="skip the plain-bf16 row")
    args = ap.parse_args(argv)

    import torch

    from monai_unetzoo.inference import resolve_autocast_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    args.torch_device = C.pick_device(args.device)
    args.epochs = args.epochs or (1 if args.quick else 2)
    args.passes_per_epoch = args.passes_per_epoch or (2 if args.quick else 4)
    rounds = args.rounds or (1 if args.quick else 3)
    bf16 = None if args.no_bf16 else resolve_autocast_dtype("auto", args.torch_device)
    if bf16 == torch.float16:
        bf16 = None  # fp16 training needs a GradScaler; not the comparison asked for
    sides = ["bundle", "plain"] + (["plain-bf16"] if bf16 is not None else [])

    with tempfile.TemporaryDirectory(prefix="unetzoo_train_") as tmp:
        parser = _parse_bundle(args, tmp)
        print("... building the bundle's cached training dataset", file=sys.stderr, flush=True)
        torch.manual_seed(0)
        net0 = parser.get_parsed_content("network_def", instantiate=True, lazy=False)
        net_init = copy.deepcopy(net0.state_dict())
        parser.get_parsed_content("train#dataset")
        patch = parser.get_parsed_content("patch_size")
        batch_imgs = parser.get_parsed_content("images_per_batch")
        per_img = parser.get_parsed_content("patches_per_image")
        results: dict[str, list[dict]] = {s: [] for s in sides}
        for rnd in range(rounds):
            for side in sides:
                print(f"... round {rnd + 1}/{rounds}: {side}", file=sys.stderr, flush=True)
                if side == "bundle":
                    results[side].append(run_bundle(parser, net_init, args.epochs))
                else:
                    results[side].append(run_plain(parser, net_init, args.epochs, args.torch_device,
                                                   bf16 if side == "plain-bf16" else None))

    rows = []
    for side in sides:
        rs = results[side]
        rows.append({
            "loop": side,
            "iterations": rs[0]["iterations"],
            "samples_per_s": statistics.median(r["samples_per_s"] for r in rs),
            "wait_fraction": statistics.median(r["wait_fraction"] for r in rs),
            "first_iteration_s": statistics.median(r["first_iteration_s"] for r in rs),
            "runs": rs,
        })
    base = rows[0]["samples_per_s"]
    for r in rows:
        r["ratio_vs_bundle"] = r["samples_per_s"] / base
    info = C.machine_info(args.torch_device)
    print(f"\ntraining throughput{' (QUICK: 1 short round -- noisy)' if args.quick else ''}: DRIVE bundle, "
          f"data={args.dataset_dir}, {batch_imgs} images x {per_img} patches of {tuple(patch)} per batch, "
          f"num_workers={args.num_workers}, {args.epochs} epoch(s) x passes_per_epoch {args.passes_per_epoch}, "
          f"median of {rounds} round(s); {info}")
    cols = [("loop", "loop", "<s"), ("iterations", "iters", ">d"), ("samples_per_s", "samples/s", ">.2f"),
            ("ratio_vs_bundle", "x bundle", ">.2f"), ("wait_pct", "wait %", ">.1f"),
            ("first_iteration_s", "1st iter s", ">.2f")]
    C.print_table([dict(r, wait_pct=100 * r["wait_fraction"]) for r in rows], cols)
    C.write_json(args.json, {"benchmark": "training_throughput", "quick": args.quick, "machine": info,
                             "dataset_dir": args.dataset_dir, "patch_size": patch, "images_per_batch": batch_imgs,
                             "patches_per_image": per_img, "num_workers": args.num_workers, "epochs": args.epochs,
                             "passes_per_epoch": args.passes_per_epoch, "rounds": rounds, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
