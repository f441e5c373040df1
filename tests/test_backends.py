"""Prediction backends (issue 19): every backend reproduces the eager predictor on a real hippocampus case and a
real DRIVE image, missing runtimes are usage errors naming the extra, and the cache never serves a model made from
other weights.

The reference is the eager path (the bundle's ``nn.Module`` through :class:`SlidingWindowPredictor`), which the
rest of the suite checks against MONAI. Checkpoints are seeded, untrained ``network_def`` s of the real bundles:
agreement between backends is measured, not accuracy. The compiled backend is tested once per bundle (about 40 s
of compile each on 2 cores), in the precision its bundle runs by default on CPUs with native bf16 (hippocampus) and
in fp32 (DRIVE).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_unetzoo.backend_choice import MIN_GAIN, auto_backend_candidates, pick_fastest_backend
from monai_unetzoo.backends import (
    BACKEND_CHOICES,
    CompiledWindowNetwork,
    backend_unavailable_reason,
    build_window_network,
    window_model_key,
)
from monai_unetzoo.inference import cpu_has_native_bf16
from monai_unetzoo.predict import BundleConfigError, CasePipeline, PredictionSettings, load_prediction_bundle
from monai_unetzoo.predict.discovery import discover_prediction_cases

REPO = Path(__file__).resolve().parents[1]
UNETZOO = shutil.which("unetzoo", path=str(Path(sys.executable).parent)) or "unetzoo"
#: argmax (threshold for DRIVE's one channel) agreement with the eager predictor, per precision (issue 19)
AGREEMENT = {"fp32": 0.999, "bf16": 0.995}
#: what --backend auto may time on a CPU
BACKENDS_TIMED = ("eager", "openvino", "onnxruntime")


def seeded_checkpoint(bundle: str, folder: Path, seed: int = 0) -> Path:
    """A state dict of the bundle's own ``network_def``, seeded and untrained (as tests/test_predict_faults.py)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "train.json"))
    parser["bundle_root"] = str(REPO / "bundles" / bundle)
    parser.get_parsed_content("imports")
    torch.manual_seed(seed)
    path = folder / f"{bundle}_seed{seed}.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


def centred_sigmoid_checkpoint(bundle, case, path: Path) -> Path:
    """Shift the head bias of ``bundle``'s untrained one-channel (sigmoid) network by its median logit on ``case``.

    An untrained network's logits can all lie below 0 (DRIVE's ResUNet with seed 0: every pixel background), and
    backends agreeing on an empty map prove nothing; centred on the case, about half the FOV is vessel.
    """
    settings = PredictionSettings(device="cpu", threads=2, precision="fp32", tta=False, backend="eager")
    probs = CasePipeline(bundle, settings.resolve(bundle)).predict(case).probs[0]
    median = float(np.clip(np.median(probs[probs > 0]), 1e-6, 1 - 1e-6))
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["head.bias"] -= float(np.log(median / (1 - median)))
    torch.save(state, path)
    return path


def needs_runtime(backend: str) -> None:
    reason = backend_unavailable_reason(backend)
    if reason:
        pytest.skip(reason)


def needs_precision(precision: str) -> None:
    if precision == "bf16" and not cpu_has_native_bf16():
        pytest.skip("bf16 is emulated on this CPU (no AVX512-BF16/AMX): no bf16 backend comparison")


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("unetzoo_cache")


@pytest.fixture(scope="module")
def real_cases(tmp_path_factory) -> dict:
    """bundle name -> (loaded bundle, one real case, {precision: eager labels})."""
    from conftest import require_data

    folder = tmp_path_factory.mktemp("backend_ckpt")
    sources = {"hippocampus": require_data("Task04_Hippocampus", "imagesTr", "hippocampus_004.nii.gz"),
               "drive": require_data("DRIVE", "test", "images", "01_test.tif")}
    found = {}
    for name, source in sources.items():
        checkpoint = seeded_checkpoint(name, folder)
        bundle = load_prediction_bundle(REPO / "bundles" / name, checkpoint)
        case = discover_prediction_cases([source], folder / "out")[0][0]
        if name == "drive":
            checkpoint = centred_sigmoid_checkpoint(bundle, case, checkpoint)
            bundle = load_prediction_bundle(REPO / "bundles" / name, checkpoint)
        found[name] = (bundle, case, {})
    return found


def labels_of(real_cases: dict, name: str, backend: str, precision: str) -> np.ndarray:
    bundle, case, _ = real_cases[name]
    settings = PredictionSettings(device="cpu", threads=2, precision=precision, tta=False, backend=backend)
    return CasePipeline(bundle, settings.resolve(bundle)).predict(case).labels


def eager_labels(real_cases: dict, name: str, precision: str) -> np.ndarray:
    cached = real_cases[name][2]
    if precision not in cached:
        cached[precision] = labels_of(real_cases, name, "eager", precision)
    return cached[precision]


RUNTIME_CASES = [(name, backend, precision) for name in ("hippocampus", "drive")
                 for backend, precision in (("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"))]
COMPILE_CASES = [("hippocampus", "compile", "bf16"), ("drive", "compile", "fp32")]


@pytest.mark.real_data
@pytest.mark.parametrize("name,backend,precision", RUNTIME_CASES + [pytest.param(*c, marks=pytest.mark.slow)
                                                                  for c in COMPILE_CASES])
def test_backend_reproduces_the_eager_predictor_on_a_real_case(real_cases, cache_root, monkeypatch, name, backend,
                                                              precision):
    needs_runtime(backend)
    needs_precision(precision)
    monkeypatch.setenv("UNETZOO_CACHE_DIR", str(cache_root))
    got = labels_of(real_cases, name, backend, precision)
    want = eager_labels(real_cases, name, precision)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert 0 < want.mean() and want.max() > 0  # a non-trivial map: agreement on an all-background map means nothing
    agreement = float((got == want).mean())
    assert agreement >= AGREEMENT[precision], f"{name} {backend} {precision}: agreement {agreement:.5f}"
    # what a second process reuses is on disk: inductor's FX graph cache, or the exported model
    stored = list((cache_root / backend).rglob("fxgraph/*" if backend == "compile" else "*.onnx"))
    assert stored, f"nothing cached under {cache_root / backend}"


def test_onnxruntime_refuses_bf16_and_backends_refuse_ensembles(tmp_path):
    needs_runtime("onnxruntime")
    a, b = seeded_checkpoint("hippocampus", tmp_path, 0), seeded_checkpoint("hippocampus", tmp_path, 1)
    one = load_prediction_bundle(REPO / "bundles" / "hippocampus", a)
    with pytest.raises(BundleConfigError, match="onnxruntime computes fp32"):
        PredictionSettings(device="cpu", precision="bf16", backend="onnxruntime").resolve(one)
    assert PredictionSettings(device="cpu", backend="onnxruntime").resolve(one).precision == "fp32"
    ensemble = load_prediction_bundle(REPO / "bundles" / "hippocampus", [a, b])
    with pytest.raises(BundleConfigError, match="ensemble"):
        PredictionSettings(device="cpu", backend="compile").resolve(ensemble)
    assert PredictionSettings(device="cpu", backend="auto").resolve(ensemble).backend == "eager"  # nothing to time


@pytest.mark.parametrize("native_bf16", [True, False])
def test_auto_precision_is_recorded_as_the_dtype_that_runs(tmp_path, monkeypatch, native_bf16):
    # The bundle asks for "auto"; provenance must name what the windows compute in on this CPU (bf16 on an
    # AVX512-BF16/AMX CPU, fp32 on an AVX2 one), read back from the predictor's own window function.
    import monai_unetzoo.inference as inference

    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: native_bf16)
    bundle = load_prediction_bundle(REPO / "bundles" / "hippocampus", seeded_checkpoint("hippocampus", tmp_path))
    assert bundle.precision == "auto"
    resolved = PredictionSettings(device="cpu").resolve(bundle)
    window = resolved.make_predictor().window_function(bundle.network, 3, torch.device("cpu"))
    assert resolved.precision == ("bf16" if native_bf16 else "fp32")
    assert window.autocast_dtype == (torch.bfloat16 if native_bf16 else None)
    assert resolved.as_dict()["precision"] == resolved.precision  # what provenance.json's settings hold


def test_a_changed_checkpoint_never_reuses_a_cached_export(tmp_path):
    """Two checkpoints through one cache folder: two exported files, each run giving its own network's logits
    (compared with that network in eager fp32), and the same checkpoint again reuses its file untouched."""
    needs_runtime("onnxruntime")
    root, window = tmp_path / "cache", (1, 40, 56, 40)
    x = torch.randn(3, *window)
    outputs = []
    for seed in (0, 1, 0):
        bundle = load_prediction_bundle(REPO / "bundles" / "hippocampus", seeded_checkpoint("hippocampus", tmp_path, seed))
        net = build_window_network("onnxruntime", bundle.network, window_shape=window, batch=4, dtype=None,
                                   weights_sha256=bundle.checkpoint_sha256, threads=2, cache_root=root)
        with torch.inference_mode():
            want = bundle.network.eval()(x)
        got = net(x)
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
        outputs.append((got, sorted((p.name, p.stat().st_mtime_ns) for p in (root / "onnxruntime").iterdir())))
    assert not torch.allclose(outputs[0][0], outputs[1][0], atol=1e-2)  # the two checkpoints differ
    assert len(outputs[1][1]) == 2 and outputs[2][1] == outputs[1][1]  # seed 0 again: no new export, no rewrite


def test_the_cache_key_depends_on_weights_window_batch_dtype_and_backend():
    net = torch.nn.Conv3d(1, 2, 3, padding=1)
    base = dict(backend="compile", network=net, weights_sha256="a" * 64, window_shape=(1, 8, 8, 8), batch=2,
                dtype=torch.float32)
    key = window_model_key(**base)
    assert window_model_key(**base) == key
    for change in ({"weights_sha256": "b" * 64}, {"window_shape": (1, 8, 8, 16)}, {"batch": 4},
                   {"dtype": torch.bfloat16}, {"backend": "onnxruntime"}, {"network": torch.nn.Conv3d(1, 3, 3)}):
        assert window_model_key(**{**base, **change}) != key, change
    # without a checkpoint file the weights themselves are hashed: other values, another key
    other = torch.nn.Conv3d(1, 2, 3, padding=1)
    assert window_model_key(**{**base, "weights_sha256": ""}) != window_model_key(
        **{**base, "weights_sha256": "", "network": other})


def test_cli_backend_choices_match_the_package():
    import unetzoo_cli

    assert unetzoo_cli._BACKEND_CHOICES == BACKEND_CHOICES


def test_a_missing_runtime_names_its_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` meets when it is absent
    reason = backend_unavailable_reason("onnxruntime")
    assert reason is not None and "needs onnxruntime" in reason and "monai-unetzoo[onnx]" in reason
    assert backend_unavailable_reason("eager") is None and backend_unavailable_reason("compile") is None
    assert "unknown backend" in backend_unavailable_reason("tensorrt")


@pytest.mark.real_data
def test_a_missing_runtime_is_a_usage_error_naming_the_extra(hippocampus_dir, tmp_path):
    """The runtime hidden from the CLI's interpreter (``sys.modules[name] = None`` in a sitecustomize): exit 2 and
    one line naming the extra, no traceback, nothing predicted."""
    backend, extra = "openvino", "monai-unetzoo[openvino]"
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['openvino'] = None\nsys.modules['onnxruntime'] = None\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hide), str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="2")
    source = hippocampus_dir / "imagesTr" / "hippocampus_004.nii.gz"
    proc = subprocess.run([UNETZOO, "predict", "--bundle", str(REPO / "bundles" / "hippocampus"), "--checkpoint",
                           str(seeded_checkpoint("hippocampus", tmp_path)), "--input", str(source), "--output",
                           str(tmp_path / "out"), "--backend", backend, "--quiet"],
                          capture_output=True, encoding="utf-8", errors="replace", env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"--backend {backend} needs {backend}" in proc.stderr and extra in proc.stderr
    assert not list((tmp_path / "out").glob("*_seg*"))


def test_compile_pads_a_batch_to_its_power_of_two_bucket(tmp_path):
    """A case of one window (a Task04 volume is smaller than its window) runs one window, not sw_batch_size:
    the padded batch is the next power of two, at most the batch; each bucket compiles once and gives eager's
    values."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 1))
    compiled = CompiledWindowNetwork(net, (1, 8, 8, 8), batch=16, dtype=torch.float32, cache_dir=tmp_path / "c")
    assert [compiled.bucket(w) for w in (1, 2, 3, 4, 5, 8, 9, 15, 16)] == [1, 2, 4, 4, 8, 8, 16, 16, 16]
    with pytest.raises(ValueError, match="batches of <= 16"):
        compiled(torch.zeros(17, 1, 8, 8, 8))
    x = torch.randn(3, 1, 8, 8, 8)
    with torch.inference_mode():
        for rows in (1, 3, 1):
            torch.testing.assert_close(compiled(x[:rows]), net.eval()(x[:rows]), rtol=1e-4, atol=1e-5)
    assert compiled.compiled_buckets == {1, 4}


def test_auto_keeps_eager_unless_another_backend_is_clearly_faster():
    assert pick_fastest_backend({}) == "eager"
    assert pick_fastest_backend({"eager": 1.0, "openvino": 1.0 - MIN_GAIN / 2}) == "eager"  # within the noise
    assert pick_fastest_backend({"eager": 1.0, "openvino": 0.7, "onnxruntime": 0.8}) == "openvino"
    assert pick_fastest_backend({"eager": 0.5, "openvino": 0.7}) == "eager"
    assert auto_backend_candidates("bf16", torch.device("cuda")) == ["eager"]
    assert "onnxruntime" not in auto_backend_candidates("bf16", torch.device("cpu"))  # it computes fp32 only


@pytest.mark.real_data
def test_cli_backend_auto_measures_once_then_reuses_its_choice(hippocampus_dir, tmp_path):
    """``unetzoo predict --backend auto`` on a real Task04 case: the first run times the candidates, prints and
    stores its choice (each candidate's labels agreeing with eager's); a second run reads the stored choice without
    measuring (the file is untouched) and writes the same label map as the first; another checkpoint gets a choice
    of its own."""
    import json

    import nibabel as nib

    source = hippocampus_dir / "imagesTr" / "hippocampus_004.nii.gz"
    env = dict(os.environ, UNETZOO_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="2",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))

    def run(ckpt: Path, out: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([UNETZOO, "predict", "--bundle", str(REPO / "bundles" / "hippocampus"), "--checkpoint",
                               str(ckpt), "--input", str(source), "--output", str(tmp_path / out), "--backend", "auto",
                               "--threads", "2"], capture_output=True, encoding="utf-8", errors="replace", env=env,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr
        return proc

    ckpt = seeded_checkpoint("hippocampus", tmp_path)
    first = run(ckpt, "first")
    stored = list((tmp_path / "cache" / "auto").glob("*.json"))
    assert len(stored) == 1
    choice = json.loads(stored[0].read_text())
    assert choice["backend"] in choice["seconds"] and set(choice["seconds"]) <= set(BACKENDS_TIMED)
    assert all(a >= AGREEMENT[choice["precision"]] for a in choice["agreement"].values()), choice
    assert f"backend {choice['backend']}" in first.stdout + first.stderr
    assert f"auto -> {choice['backend']} (measured" in first.stdout + first.stderr
    mtime = stored[0].stat().st_mtime_ns
    run(ckpt, "second")
    assert stored[0].stat().st_mtime_ns == mtime
    labels = [np.asarray(nib.load(str(tmp_path / o / "hippocampus_004_seg.nii.gz")).dataobj) for o in ("first", "second")]
    np.testing.assert_array_equal(labels[0], labels[1])
    run(seeded_checkpoint("hippocampus", tmp_path, seed=1), "other")
    assert len(list((tmp_path / "cache" / "auto").glob("*.json"))) == 2

