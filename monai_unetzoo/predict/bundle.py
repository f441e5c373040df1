"""The bundle contract of batch prediction: what ``unetzoo predict`` and a bundle's ``run inferring`` read from a
MONAI bundle, resolved once into a :class:`PredictionBundle` (see the package docstring for the ids it looks up)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..checkpoints import CorruptCheckpointError, IncompatibleCheckpointError, load_checkpoint_file
from ..inference import channels_last_network
from ..volume_io import quiet_optional_reader_warnings

__all__ = ["BundleConfigError", "PredictionBundle", "load_prediction_bundle", "prediction_bundle_from_parts"]

_LOADER_TRANSFORM_NAMES = ("LoadImaged", "LoadImage", "EnsureChannelFirstd", "EnsureChannelFirst")
_STATE_DICT_KEYS = ("model", "network", "state_dict", "net")


class BundleConfigError(ValueError):
    """The bundle (or checkpoint) cannot be used for prediction; the message says what is missing or wrong."""


@dataclass
class PredictionBundle:
    """What prediction needs from a bundle: its network (weights loaded, eval mode, channels-last), preprocessing
    without the loader, the sliding-window defaults and the label step. Built by :func:`load_prediction_bundle`
    (the CLI) or :func:`prediction_bundle_from_parts` (a bundle's own ``run inferring``), never field by field."""

    root: Path
    name: str
    version: str
    spatial_dims: int
    in_channels: int
    out_channels: int
    label_names: dict[int, str]  # foreground label value -> name
    network: torch.nn.Module
    preprocessing: Any  # monai.transforms.Compose without the loader transforms
    roi_size: tuple[int, ...]
    sw_batch_size: int = 4
    overlap: float = 0.5
    mode: str = "gaussian"
    activation: str = "softmax"
    precision: str = "fp32"  # the inferer's autocast default ("auto", "bf16", "fp16", "fp32")
    threshold: float = 0.5  # sigmoid outputs: foreground where the probability exceeds it
    tta_axes: tuple[int, ...] | None = None  # the bundle's default test-time mirroring (None: off)
    mirror_axes: tuple[int, ...] | None = None  # axes the bundle may be mirrored over (``--tta``); None: unknown
    postprocess: str = "none"  # label post-processing the bundle declares (see postprocess.parse_postprocess)
    checkpoint: Path | None = None  # the weights file; the first member's for an ensemble
    checkpoint_sha256: str = ""  # an ensemble's: SHA-256 of its members' hashes in order (see ``members``)
    members: tuple[tuple[Path, str], ...] = ()  # (weights file, SHA-256) of every network (one unless an ensemble)
    input_description: str = ""
    raster_reader: Any = None  # the bundle's own PILReader (and its options) for 2D images, if it names one
    config_files: tuple[str, ...] = ("inference.json",)

    @property
    def binary(self) -> bool:
        """One foreground class (a sigmoid channel, or softmax over background + one class)."""
        return len(self.label_names) == 1


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _unwrap_state_dict(obj: Any, path: Path) -> dict:
    if isinstance(obj, dict):
        for key in _STATE_DICT_KEYS:
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise BundleConfigError(f"{path}: not a state_dict (nor a dict holding one under {list(_STATE_DICT_KEYS)})")


def _strip_loader(preprocessing: Any) -> tuple[Any, Any]:
    """``(Compose without the leading loader transforms, the PILReader the bundle's LoadImaged names or None)``.

    Prediction loads inputs itself (every format, DICOM series included); what it takes over from the bundle's
    ``LoadImaged`` is an explicitly named ``PILReader`` with its options (e.g. ``reverse_indexing=False``, so a
    network trained on ``(C, H, W)`` photographs sees them the same way). Other reader options that change the
    array layout cannot be honoured and are refused rather than silently ignored.
    """
    from monai.data import ITKReader, NibabelReader, PILReader
    from monai.transforms import Compose

    if preprocessing is None:
        return Compose([]), None
    transforms = list(preprocessing.transforms) if isinstance(preprocessing, Compose) else [preprocessing]
    raster_reader = None
    while transforms and type(transforms[0]).__name__ in _LOADER_TRANSFORM_NAMES:
        t = transforms.pop(0)
        loader = getattr(t, "_loader", t)  # LoadImaged wraps a LoadImage
        if getattr(loader, "auto_select", True) or not getattr(loader, "readers", None):
            continue
        named = loader.readers[-1]  # LoadImage registers the readers it is given after its defaults
        if isinstance(named, PILReader):
            raster_reader = named
        elif (isinstance(named, ITKReader) and not named.reverse_indexing) or (
            isinstance(named, NibabelReader) and getattr(named, "as_closest_canonical", False)
        ):
            raise BundleConfigError(
                f"the bundle loads images with {type(named).__name__} options that change the array layout; "
                "prediction supports MONAI's default ITKReader/NibabelReader layout (and any PILReader options)"
            )
    for t in transforms:
        if type(t).__name__ in _LOADER_TRANSFORM_NAMES:
            raise BundleConfigError(
                f"preprocessing has {type(t).__name__} after other transforms; only leading loader transforms are supported"
            )
    return Compose(transforms), raster_reader


def _network_format(meta: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Channels, dims and label names declared by ``metadata.json``'s ``network_data_format``."""
    try:
        ndf = meta["network_data_format"]
        image_fmt, pred_fmt = ndf["inputs"]["image"], ndf["outputs"]["pred"]
        fmt = {
            "in_channels": int(image_fmt["num_channels"]),
            "spatial_shape": list(image_fmt["spatial_shape"]),
            "out_channels": int(pred_fmt["num_channels"]),
            "channel_def": {int(k): str(v) for k, v in pred_fmt.get("channel_def", {}).items()},
            "input_description": str(image_fmt.get("channel_def", "")),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleConfigError(
            f"{where}: needs network_data_format.inputs.image.{{num_channels, spatial_shape}} and "
            f"outputs.pred.{{num_channels, channel_def}} ({type(exc).__name__}: {exc})"
        ) from exc
    if len(fmt["spatial_shape"]) not in (2, 3):
        raise BundleConfigError(f"{where}: inputs.image.spatial_shape must have 2 or 3 entries")
    if fmt["out_channels"] < 1:
        raise BundleConfigError(f"{where}: outputs.pred.num_channels must be >= 1")
    return fmt


def _axes(value: Any, spatial_dims: int, what: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    axes = (int(value),) if isinstance(value, int) else tuple(int(v) for v in value)
    if any(not 0 <= a < spatial_dims for a in axes):
        raise BundleConfigError(f"{what} {list(axes)}: spatial axes must lie in 0..{spatial_dims - 1}")
    return axes


def _check_network_contract(network: torch.nn.Module, fmt: dict[str, Any], roi_size: tuple[int, ...], where: str) -> None:
    """One forward pass on zeros of one window, before any case: the network must take the metadata's input
    channels and give its output channels, else every case would fail (or, worse, be labelled from the wrong
    channels). Raises :class:`BundleConfigError` naming both numbers."""
    shape = tuple(r if r > 0 else 32 for r in roi_size)
    x = torch.zeros((1, fmt["in_channels"], *shape))
    device = next((p.device for p in network.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            out = network.eval()(x.to(device))
    except Exception as exc:
        raise BundleConfigError(
            f"{where}: network_def does not accept a window of {fmt['in_channels']} channel(s) x {shape}, the input "
            f"metadata.json declares (network_data_format.inputs.image.num_channels) ({type(exc).__name__}: {exc})"
        ) from exc
    out = out[0] if isinstance(out, (list, tuple)) else out
    if out.ndim != x.ndim or out.shape[1] != fmt["out_channels"]:
        raise BundleConfigError(
            f"{where}: metadata.json declares {fmt['out_channels']} output channel(s) "
            f"(network_data_format.outputs.pred.num_channels) but network_def gives {tuple(out.shape)}"
        )


def prediction_bundle_from_parts(
    root: str | os.PathLike,
    metadata: Mapping[str, Any],
    network: torch.nn.Module | Sequence[torch.nn.Module],
    preprocessing: Any = None,
    inferer: Mapping[str, Any] | Any = None,
    *,
    threshold: float = 0.5,
    tta_axes: Any = None,
    mirror_axes: Any = None,
    postprocess: Any = None,
    checkpoint: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    config_files: tuple[str, ...] = ("inference.json",),
) -> PredictionBundle:
    """The one constructor of :class:`PredictionBundle`, from a bundle's parsed parts.

    Args:
        root: the bundle folder.
        metadata: the parsed ``metadata.json`` (``network_data_format`` gives channels, dims and label names).
        network: the bundle's network with its weights loaded; put in eval mode and channels-last here. A list of
            networks (one per checkpoint, e.g. cross-validation folds) becomes a
            :class:`~monai_unetzoo.inference.ProbabilityEnsemble` averaging their probabilities.
        preprocessing: the bundle's preprocessing ``Compose`` (its loader transforms are dropped).
        inferer: the sliding-window settings: a mapping or an inferer object with attributes ``roi_size``,
            ``sw_batch_size``, ``overlap``, ``mode``, ``activation`` and ``amp`` (each optional).
        threshold, tta_axes, mirror_axes, postprocess: the bundle's label step, default test-time mirroring, the
            axes it may be mirrored over and its label post-processing.
        checkpoint: the weights file, or one per network of an ensemble (for provenance: their SHA-256).
    """
    from .postprocess import parse_postprocess

    root = Path(root)
    fmt = _network_format(metadata, str(root / "metadata.json"))
    sd, out_channels, channel_def = len(fmt["spatial_shape"]), fmt["out_channels"], fmt["channel_def"]
    if out_channels == 1:
        label_names = {1: channel_def.get(0, "foreground")}
    else:
        label_names = {k: channel_def.get(k, f"label{k}") for k in range(1, out_channels)}

    def arg(name: str, default: Any) -> Any:
        value = inferer.get(name, default) if isinstance(inferer, Mapping) else getattr(inferer, name, default)
        return default if value is None else value

    roi = arg("roi_size", None)
    if roi is None and all(isinstance(v, int) for v in fmt["spatial_shape"]):
        roi = fmt["spatial_shape"]
    roi = [-1] * sd if roi is None else roi  # the whole image is one window
    roi_size = (int(roi),) * sd if isinstance(roi, int) else tuple(int(v) for v in roi)
    if len(roi_size) != sd:
        raise BundleConfigError(f"{root}: inferer roi_size {roi_size} does not have {sd} entries")
    activation = str(arg("activation", "softmax" if out_channels > 1 else "sigmoid"))
    if activation not in ("softmax", "sigmoid"):
        raise BundleConfigError(f"{root}: inferer activation must be 'softmax' or 'sigmoid', got {activation!r}")
    if activation == "sigmoid" and out_channels > 1:
        raise BundleConfigError(f"{root}: multi-label (sigmoid, {out_channels} channels) outputs are not supported")
    if activation == "softmax" and out_channels == 1:
        raise BundleConfigError(f"{root}: softmax over a single output channel; use activation 'sigmoid'")
    overlap = arg("overlap", 0.5)
    with quiet_optional_reader_warnings():
        stripped, raster_reader = _strip_loader(preprocessing)
    if isinstance(network, (list, tuple)):
        from ..inference import ProbabilityEnsemble

        network = ProbabilityEnsemble(list(network), activation) if len(network) > 1 else network[0]
    _check_network_contract(network, fmt, roi_size, str(root))
    channels_last_network(network)
    files = [checkpoint] if isinstance(checkpoint, (str, os.PathLike)) else list(checkpoint or [])
    members = tuple((Path(f).resolve(), file_sha256(f)) for f in files)  # the predictor's windows are channels-last: matching weights, 1.7-2x on CPU
    amp = arg("amp", None)
    return PredictionBundle(
        root=root.resolve(),
        name=str(metadata.get("name", root.name)),
        version=str(metadata.get("version", "")),
        spatial_dims=sd,
        in_channels=fmt["in_channels"],
        out_channels=out_channels,
        label_names=label_names,
        network=network,
        preprocessing=stripped,
        roi_size=roi_size,
        sw_batch_size=int(arg("sw_batch_size", 4)),
        overlap=float(overlap[0] if isinstance(overlap, (list, tuple)) else overlap),
        mode=str(getattr(arg("mode", "gaussian"), "value", arg("mode", "gaussian"))),
        activation=activation,
        precision="fp32" if amp in (None, False) else ("auto" if amp is True else str(amp)),
        threshold=float(threshold),
        tta_axes=_axes(tta_axes, sd, f"{root}: tta_axes"),
        mirror_axes=_axes(mirror_axes, sd, f"{root}: mirror_axes"),
        postprocess=parse_postprocess(postprocess).describe(),
        checkpoint=members[0][0] if members else None,
        checkpoint_sha256=_combined_sha256([sha for _, sha in members]),
        members=members,
        input_description=fmt["input_description"],
        raster_reader=raster_reader,
        config_files=tuple(config_files),
    )


class _BundleConfigReader:
    """``inference.json`` (layered over ``train.json`` when written as an overlay) parsed lazily with MONAI's
    ``ConfigParser``: only the ids asked for, and what they reference, are built."""

    def __init__(self, root: Path):
        from monai.bundle import ConfigParser

        self.root = root
        meta_path, infer_path = root / "metadata.json", root / "inference.json"
        for p in (meta_path, infer_path):
            if not p.is_file():
                raise BundleConfigError(f"{root} is not a bundle the CLI can run: {p.name} is missing")
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
            self.infer_raw = json.loads(infer_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BundleConfigError(f"{root}: metadata.json or inference.json cannot be parsed ({exc})") from exc
        train_path = root / "train.json"
        layered = isinstance(self.infer_raw, dict) and (
            any(str(k).startswith("+") for k in self.infer_raw) or "network_def" not in self.infer_raw
        )
        self.files = [train_path, infer_path] if layered and train_path.is_file() else [infer_path]
        self.names = " + ".join(p.name for p in self.files)
        self.parser = ConfigParser()
        try:
            self.parser.read_meta(str(meta_path))
            self.parser.read_config([str(p) for p in self.files])
        except Exception as exc:
            raise BundleConfigError(f"{root}: {self.names} cannot be parsed ({type(exc).__name__}: {exc})") from exc
        self.parser["bundle_root"] = str(root)
        if str(root) not in sys.path:
            sys.path.insert(1, str(root))  # bundle-local modules (scripts/), as monai.bundle's runner does

    def _in_raw(self, key: str) -> bool:
        node: Any = self.infer_raw
        for part in key.split("#"):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    def find(self, *ids: str) -> str | None:
        """The first id that inference.json itself defines, else the first one the merged config has."""
        return next((i for i in ids if self._in_raw(i)), None) or next((i for i in ids if i in self.parser), None)

    def get(self, key: str | None, default: Any = None) -> Any:
        if key is None or key not in self.parser:
            return default
        try:
            return self.parser.get_parsed_content(key, instantiate=True)
        except Exception as exc:
            raise BundleConfigError(
                f"{self.root}: '{key}' of {self.names} cannot be built ({type(exc).__name__}: {exc})"
            ) from exc

    def inferer_args(self) -> dict[str, Any]:
        """The sliding-window keys of the inferer's definition (whatever its ``_target_``), not the object."""
        inferer_id = self.find("inferer", "infer#inferer")
        if inferer_id is None:
            return {}
        keys = ("roi_size", "sw_batch_size", "overlap", "mode", "activation", "amp")
        return {k: self.get(f"{inferer_id}#{k}") for k in keys if f"{inferer_id}#{k}" in self.parser}


def _load_weights(network: torch.nn.Module, ckpt: Path) -> None:
    """Load ``ckpt`` through the project's checked loader (clear messages for truncated/foreign files)."""
    try:
        state = load_checkpoint_file(ckpt, map_location="cpu")
    except (CorruptCheckpointError, IncompatibleCheckpointError, FileNotFoundError) as exc:
        raise BundleConfigError(str(exc)) from exc
    try:
        network.load_state_dict(_unwrap_state_dict(state, ckpt), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[:3]
        raise BundleConfigError(f"{ckpt}: does not fit the bundle's network_def: {' '.join(first)}") from exc


def _combined_sha256(hashes: Sequence[str]) -> str:
    """One member: its SHA-256; an ensemble: SHA-256 of the members' hex digests joined by newlines, in order."""
    if len(hashes) <= 1:
        return hashes[0] if hashes else ""
    return hashlib.sha256("\n".join(hashes).encode("ascii")).hexdigest()


def checkpoint_files(checkpoint: Any, root: Path) -> list[Path]:
    """The weights files asked for: None -> ``<bundle>/models/model.pt``; a file; a folder -> every
    ``<folder>/*/model.pt`` (a folder of cross-validation folds, ``models/fold0/model.pt``, ...), sorted; or a
    list of those. Raises :class:`BundleConfigError` for a missing file or a folder without fold checkpoints."""
    if checkpoint is None:
        default = root / "models" / "model.pt"
        if not default.is_file():
            raise BundleConfigError(f"checkpoint not found: {default} (train the bundle first, or pass --checkpoint FILE)")
        return [default]
    specs = [checkpoint] if isinstance(checkpoint, (str, os.PathLike)) else list(checkpoint)
    files: list[Path] = []
    for spec in map(Path, specs):
        if spec.is_dir():
            found = sorted(spec.glob("*/model.pt"))
            if not found:
                raise BundleConfigError(f"checkpoint folder {spec} holds no */model.pt (e.g. fold0/model.pt)")
            files.extend(found)
        elif spec.is_file():
            files.append(spec)
        else:
            raise BundleConfigError(f"checkpoint not found: {spec}")
    return files


def load_prediction_bundle(bundle_dir: str | os.PathLike, checkpoint: Any = None) -> PredictionBundle:
    """Read ``bundle_dir`` (flat MONAI bundle) and its checkpoint(s) (see :func:`checkpoint_files`; several make an
    ensemble); raise :class:`BundleConfigError` with a clear message when something the contract needs is missing."""
    root = Path(bundle_dir).resolve()
    if not root.is_dir():
        raise BundleConfigError(f"bundle folder not found: {bundle_dir}")
    cfg = _BundleConfigReader(root)
    _network_format(cfg.meta, str(root / "metadata.json"))  # fail on the metadata before building anything
    cfg.get("imports")
    if "network_def" not in cfg.parser:
        raise BundleConfigError(f"{root}: {cfg.names} define no 'network_def'")
    network = cfg.get("network_def")
    if not isinstance(network, torch.nn.Module):
        raise BundleConfigError(f"{root}: 'network_def' is a {type(network).__name__}, not a torch.nn.Module")
    files = checkpoint_files(checkpoint, root)
    networks = [network] + [copy.deepcopy(network) for _ in files[1:]]  # one network per ensemble member
    for net, ckpt in zip(networks, files):
        _load_weights(net, ckpt)
    with quiet_optional_reader_warnings():  # the bundle's LoadImaged is built here (and then dropped)
        preprocessing = cfg.get(cfg.find("preprocessing", "infer#preprocessing"))
    return prediction_bundle_from_parts(
        root,
        cfg.meta,
        networks,
        preprocessing,
        cfg.inferer_args(),
        threshold=cfg.get("threshold", 0.5),
        tta_axes=cfg.get("tta_axes"),
        mirror_axes=cfg.get("mirror_axes"),
        postprocess=cfg.get("postprocess"),
        checkpoint=files,
        config_files=tuple(p.name for p in cfg.files),
    )
