"""Both bundles against MONAI's own bundle checks and the model-zoo's rules (issue 14).

(1) the zoo's required-file, version/changelog, metadata-key and key-naming rules (``monai_unetzoo.bundle_checks``);
(2) MONAI's ``verify_net_in_out`` at its default settings, ``verify_metadata`` against the offline schema and
``ConfigWorkflow.check_properties`` for the train and eval workflows; (3) ``ckpt_export`` (TorchScript) and
``onnx_export`` (dynamic batch and spatial axes, run in onnxruntime) reproducing the eager network on a real case
of another size than the metadata's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_unetzoo.bundle_checks import (
    SCHEMA_REQUIRED_KEYS,
    inference_config_key_problems,
    train_config_key_problems,
    version_problems,
    zoo_conformance_problems,
)

REPO = Path(__file__).resolve().parents[1]
BUNDLES = ("drive", "hippocampus")
#: Documented exceptions to the zoo's rules (the zoo keeps such lists in ci/bundle_custom_data.py).
ZOO_EXCEPTIONS = {
    # train#dataset repeats the cached images passes_per_epoch times (a torch Subset of train#cache_dataset,
    # whose "data" is the training datalist); making it a dataset with "data" would change the sampling.
    "drive": {"train.json:train#dataset#data"},
    "hippocampus": set(),
}


def _bundle(name: str) -> Path:
    return REPO / "bundles" / name


def _files(name: str, *configs: str) -> list[str]:
    return [str(_bundle(name) / c) for c in configs]


# ------------------------------------------------------------------------------------------- (1) zoo rules


@pytest.mark.parametrize("name", BUNDLES)
def test_zoo_files_versions_metadata_and_train_keys(name):
    problems = zoo_conformance_problems(_bundle(name))
    inference = {k for k in problems if k.startswith("inference.json:")}  # checked in the next test
    assert set(problems) - inference == ZOO_EXCEPTIONS[name], problems


@pytest.mark.parametrize("name", ["drive", "hippocampus"])
def test_zoo_inference_keys(name):
    config = json.loads((_bundle(name) / "inference.json").read_text())
    assert inference_config_key_problems(config) == {}


def test_zoo_checks_catch_what_the_zoo_rejects(tmp_path):
    """Each rule fails on a bundle that breaks it (a copy of the hippocampus bundle, changed one way each)."""
    bundle = tmp_path / "hippocampus"
    shutil.copytree(_bundle("hippocampus"), bundle, ignore=shutil.ignore_patterns("models"))
    (bundle / "LICENSE").unlink()
    assert set(zoo_conformance_problems(bundle)) == {"file:LICENSE"}

    meta = json.loads((bundle / "metadata.json").read_text())
    assert version_problems({**meta, "version": "99.0.0"}) == {
        "metadata.json:changelog": "version 99.0.0 has no entry in 'changelog'"}
    assert set(version_problems({**meta, "version": "0.2.0"})) == {"metadata.json:version"}  # not the newest
    assert set(version_problems({**meta, "changelog": {**meta["changelog"], "v1": "x"}})) == {
        "metadata.json:version_format"}
    assert set(version_problems({k: v for k, v in meta.items() if k != "changelog"})) == {"metadata.json:changelog"}

    train = json.loads((bundle / "train.json").read_text())
    del train["train"]["trainer"]["max_epochs"]
    del train["dataset_dir"]
    train["train"]["handlers"][2]["interval"] = 10
    assert set(train_config_key_problems(train)) == {
        "train.json:train#trainer#max_epochs", "train.json:dataset_dir", "train.json:val_interval"}


def test_schema_required_keys_are_the_shared_schema_s(bundle_schema):
    schema = json.loads(bundle_schema.read_text())
    assert set(SCHEMA_REQUIRED_KEYS) == set(schema["required"])


@pytest.mark.parametrize("name", BUNDLES)
def test_licence_and_readme_sections(name):
    """A LICENSE beside each bundle pointing at the repository's Apache-2.0 text; the zoo template's sections."""
    root_licence = (REPO / "LICENSE").read_text()
    assert "Apache License" in root_licence and "Version 2.0, January 2004" in root_licence
    assert "END OF TERMS AND CONDITIONS" in root_licence  # the full text, not a pointer
    pointer = (_bundle(name) / "LICENSE").read_text()
    assert "Apache License, Version 2.0" in pointer and "../../LICENSE" in pointer
    headings = [line.lstrip("#").strip().lower() for line in (_bundle(name) / "README.md").read_text().splitlines()
                if line.startswith("## ")]
    for section in ("overview", "data", "training", "performance", "commands", "torchscript and onnx",
                    "references", "data licence"):
        assert any(h.startswith(section) for h in headings), (section, headings)


# ----------------------------------------------------------------------------- (2) MONAI's bundle commands


@pytest.mark.parametrize("name", BUNDLES)
def test_verify_metadata_against_the_shared_schema(name, bundle_schema, tmp_path):
    """MONAI's ``verify_metadata`` with the offline schema as its ``filepath`` (an existing file is used as is,
    nothing is downloaded), and the same validation with jsonschema directly; a broken metadata fails both."""
    import jsonschema
    from monai.bundle import verify_metadata

    meta_file = _bundle(name) / "metadata.json"
    verify_metadata(meta_file=str(meta_file), filepath=str(bundle_schema))
    schema = json.loads(bundle_schema.read_text())
    meta = json.loads(meta_file.read_text())
    jsonschema.validate(meta, schema)

    meta["network_data_format"]["inputs"]["image"]["num_channels"] = "three"
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="Failed validating"):
        verify_metadata(meta_file=str(broken), filepath=str(bundle_schema))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(meta, schema)


@pytest.mark.parametrize("name", BUNDLES)
def test_verify_net_in_out_at_default_settings(name):
    """``verify_net_in_out network_def`` with nothing but the files (n = p = any = 1, default device)."""
    from monai.bundle import verify_net_in_out

    train, meta = _files(name, "train.json", "metadata.json")
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=train)


def test_hippocampus_8n_would_reach_a_one_voxel_bottleneck():
    """Why the metadata says 16*n: n=1 of "8*n" is an 8^3 input, 1^3 after the network's 3 poolings, where instance
    norm has a single value per channel and fails; 16^3 leaves 2^3."""
    from monai.bundle import verify_net_in_out

    train, meta = _files("hippocampus", "train.json", "metadata.json")
    shape_id = "_meta_#network_data_format#inputs#image#spatial_shape"
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        verify_net_in_out(net_id="network_def", meta_file=meta, config_file=train, device="cpu",
                          **{shape_id: ["8*n"] * 3})
    assert len(json.loads(Path(train).read_text())["network_def"]["features"]) - 1 == 3  # poolings: 16 / 2**3 = 2


def _workflow(name: str, workflow_type: str, configs: list[str], tmp_path: Path):
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(config_file=configs if len(configs) > 1 else configs[0], logging_file=False,
                              meta_file=str(_bundle(name) / "metadata.json"), workflow_type=workflow_type,
                              output_dir=str(tmp_path / "models"), num_workers=0, num_threads=1)
    workflow.initialize()  # MONAI's create_workflow does this before check_properties
    return workflow


@pytest.mark.parametrize("name", BUNDLES)
def test_check_properties_train_workflow(name, tmp_path):
    from monai.engines import SupervisedEvaluator, SupervisedTrainer

    workflow = _workflow(name, "train", _files(name, "train.json"), tmp_path)
    assert workflow.check_properties() == []
    assert isinstance(workflow.trainer, SupervisedTrainer) and isinstance(workflow.evaluator, SupervisedEvaluator)
    assert workflow.max_epochs == workflow.trainer.state.max_epochs
    assert workflow.dataset_dir == "synthetic" and workflow.bundle_root == str(_bundle(name))


@pytest.mark.parametrize("name", BUNDLES)
def test_check_properties_eval_workflow(name, tmp_path):
    """train.json + evaluate.json (how evaluation is run) as MONAI's eval workflow: its properties are the
    evaluator, dataset and inferer the bundle evaluates with, on the validation split."""
    from monai.engines import SupervisedEvaluator

    workflow = _workflow(name, "eval", _files(name, "train.json", "evaluate.json"), tmp_path)
    assert workflow.check_properties() == []
    evaluator = workflow.evaluator
    assert isinstance(evaluator, SupervisedEvaluator) and evaluator.inferer is workflow.inferer
    assert evaluator.data_loader.dataset is workflow.dataset
    val_cases = workflow.parser.get_parsed_content("datalists")["validation"]
    assert [d["case_id"] for d in workflow.dataset.data] == [d["case_id"] for d in val_cases]


@pytest.mark.parametrize("name", BUNDLES)
def test_check_properties_infer_workflow(name, tmp_path):
    """inference.json alone as MONAI's infer workflow: every required property defined; its evaluator hands each
    case to the same per-case code as ``unetzoo predict`` (monai_unetzoo.predict.BundleCaseStep)."""
    from monai.engines import SupervisedEvaluator

    from monai_unetzoo.predict import BundleCaseStep, PredictionCase

    workflow = _workflow(name, "infer", _files(name, "inference.json"), tmp_path)
    assert workflow.check_properties() == []
    evaluator = workflow.evaluator
    assert isinstance(evaluator, SupervisedEvaluator) and evaluator.inferer is workflow.inferer
    assert isinstance(evaluator._process_function, BundleCaseStep)  # ignite's process function = iteration_update
    assert evaluator.data_loader.dataset is workflow.dataset
    assert workflow.dataset.data and all(isinstance(c, PredictionCase) for c in workflow.dataset.data)


# ------------------------------------------------------------------------------- (3) TorchScript and ONNX


def _checkpoint(name: str, path: Path) -> torch.nn.Module:
    """A seeded, randomly initialised network_def of the bundle saved as the bundle saves model.pt (state dict);
    batch-norm statistics are randomised too so that eval-mode normalisation is not the identity."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(_bundle(name) / "train.json"))
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    torch.save(net.state_dict(), path)
    return net.eval()


def _real_case(name: str, data_dir: Path, tmp_path: Path) -> torch.Tensor:
    """The first validation case of the real data set, preprocessed by the bundle's own validation transforms."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(_bundle(name) / "train.json"))
    parser.update({"dataset_dir": str(data_dir), "output_dir": str(tmp_path / "models")})
    case = parser.get_parsed_content("datalists")["validation"][0]
    image = parser.get_parsed_content("validate#preprocessing")(dict(case))["image"]
    return torch.as_tensor(image).float().contiguous()


def _exports(name: str, tmp_path: Path):
    """``ckpt_export`` and ``onnx_export`` as the README documents them; returns (eager, TorchScript, ORT session)."""
    import onnxruntime
    from monai.bundle import ckpt_export, onnx_export

    ckpt = tmp_path / "model.pt"
    eager = _checkpoint(name, ckpt)
    train, meta, args = _files(name, "train.json", "metadata.json", "onnx_export.json")
    ckpt_export(net_id="network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(ckpt), meta_file=meta,
                config_file=train)
    onnx_export(args_file=args, filepath=str(tmp_path / "model.onnx"), ckpt_file=str(ckpt), meta_file=meta,
                config_file=train)
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    return eager, scripted, session


def _max_diff(a: torch.Tensor, b) -> float:
    return float((a - torch.as_tensor(np.asarray(b))).abs().max())


def _assert_dynamic(session, spatial_dims: int) -> None:
    for io in (session.get_inputs()[0], session.get_outputs()[0]):
        dims = io.shape
        assert isinstance(dims[0], str) and all(isinstance(d, str) for d in dims[2:]), dims  # symbolic axes
        assert len(dims) == spatial_dims + 2


@pytest.mark.real_data
def test_drive_exports_reproduce_the_network_on_a_real_image(drive_dir, tmp_path):
    """A real DRIVE validation image (FOV-standardised as the bundle does), two 96 x 160 crops as one batch of 2
    for ONNX (the metadata's n=1 input is 16 x 16, batch 1) and a 100 x 150 crop for TorchScript, whose scripted
    control flow also pads sizes that are not multiples of 16."""
    image = _real_case("drive", drive_dir, tmp_path)  # (3, 584, 565)
    eager, scripted, session = _exports("drive", tmp_path)
    _assert_dynamic(session, 2)
    batch = torch.stack([image[:, 200:296, 150:310], image[:, 300:396, 250:410]])  # (2, 3, 96, 160)
    onnx_crop, ts_crop = batch, image[None, :, 240:340, 200:350]
    with torch.no_grad():
        ref, ref_ts = eager(onnx_crop), eager(ts_crop)
        out_ts = scripted(ts_crop)
    (out_onnx,) = session.run(None, {"image": onnx_crop.numpy()})
    assert out_onnx.shape == (2, 1, 96, 160) and out_ts.shape == (1, 1, 100, 150)
    assert float(ref.abs().max()) > 1e-2  # a non-trivial output to compare
    assert _max_diff(ref, out_onnx) < 1e-4
    assert _max_diff(ref_ts, out_ts) < 1e-4


@pytest.mark.real_data
def test_hippocampus_exports_reproduce_the_network_on_a_real_volume(hippocampus_dir, tmp_path):
    """A real Task04 volume after the bundle's preprocessing (RAS, 1 mm, z-score): for ONNX cropped to the largest
    multiple of 8 per axis (the traced graph has no padding branch; not the metadata's 16^3), for TorchScript at
    its own odd size.

    Cropped, not zero-padded: on zero-padded volumes onnxruntime's InstanceNormalization is measured 2.3e-4 from
    both PyTorch fp32 and fp64 (PyTorch fp32 is 5e-6 from fp64); on the cropped case it is 6.8e-5.
    """
    volume = _real_case("hippocampus", hippocampus_dir, tmp_path)  # (1, 42, 51, 28) for hippocampus_015
    eager, scripted, session = _exports("hippocampus", tmp_path)
    _assert_dynamic(session, 3)
    crop = [8 * (s // 8) for s in volume.shape[1:]]
    onnx_in = volume[None, :, : crop[0], : crop[1], : crop[2]].contiguous()
    ts_in = volume[None]
    assert any(s % 8 for s in ts_in.shape[2:]) and tuple(crop) != (16, 16, 16)
    with torch.no_grad():
        ref, ref_ts = eager(onnx_in), eager(ts_in)
        out_ts = scripted(ts_in)
    (out_onnx,) = session.run(None, {"image": onnx_in.numpy()})
    assert out_onnx.shape == (1, 3, *crop) and out_ts.shape == (1, 3, *ts_in.shape[2:])
    assert float(ref.abs().max()) > 1e-2
    assert _max_diff(ref, out_onnx) < 1e-4
    assert _max_diff(ref_ts, out_ts) < 1e-4
