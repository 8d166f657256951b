"""Exported feature extractors (ONNX through onnxruntime, TorchScript) give PyTorch's features of RGB images in [0, 1]
and carry their metadata; a trained checkpoint exports; `ImageFeatureExtractor` reads image files through either."""
import numpy as np
import pytest
import torch

from PIL import Image

from deepminer.export import (EXPORT_FORMATS, ImageFeatureExtractor, ImagesToFeatures, export_checkpoint, export_model,
                              load_exported, read_export_metadata)
from deepminer.model import DeepMiner, DeepMinerConfig
from deepminer.synthetic import make_synthetic_reid
from deepminer.train import load_model, recipe, train

H, W = 64, 32
BATCH_SIZES = (1, 2, 7)  # none of them the batch size used for export (2 is): exercises the dynamic axis


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = DeepMiner(12, backbone="resnet18")  # the full Deep Miner: IE after B2 and B3, local branch, SAM & CHAM
    model.train()
    with torch.no_grad():                       # non-trivial BatchNorm statistics, as after training
        for _ in range(3):
            model(torch.randn(8, 3, H, W))
    return model.eval()


@pytest.mark.parametrize("format", sorted(EXPORT_FORMATS))
def test_exported_features_match_pytorch(model, format, tmp_path):
    info = export_model(model, tmp_path / f"m{EXPORT_FORMATS[format]}", format, height=H, width=W, batch_size=2)
    assert info["max_abs_diff"] < 1e-4
    run = load_exported(info["path"])
    if format == "onnx":
        import onnxruntime as ort
        session = ort.InferenceSession(info["path"], providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["images"]
        assert [o.name for o in session.get_outputs()] == ["features"]
        assert isinstance(session.get_inputs()[0].shape[0], str)  # symbolic: the batch axis is dynamic
    generator = torch.Generator().manual_seed(1)
    for b in BATCH_SIZES:
        images = torch.rand(b, 3, H, W, generator=generator)   # RGB in [0, 1]: the export normalizes
        with torch.no_grad():
            expected = ImagesToFeatures(model)(images)
        got = run(images.numpy() if format == "onnx" else images)
        assert got.shape == (b, sum(model.feature_dims.values()))
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=1e-4)
    assert not model.training


def test_baseline_exports(tmp_path):
    model = DeepMiner(5, DeepMinerConfig(backbone="resnet18").baseline()).eval()
    info = export_model(model, tmp_path / "b.onnx", "onnx", height=H, width=W)
    assert info["feature_dim"] == 512 and info["max_abs_diff"] < 1e-4


def test_checkpoint_round_trip(tmp_path):
    root = make_synthetic_reid(tmp_path / "data", seed=0, train_ids=6, test_ids=4, cameras=3, distractors=3, junk=2,
                               progress=False)
    config = recipe("cpu", root=str(root), epochs=1, P=4, K=2, warmup_epochs=0, eval_every=0)
    train(config, tmp_path / "run", progress=False)
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    model, config = load_model(checkpoint)
    images = torch.rand(3, 3, config.height, config.width)
    with torch.no_grad():
        expected = ImagesToFeatures(model)(images).numpy()
    for format in sorted(EXPORT_FORMATS):
        info = export_checkpoint(checkpoint, format=format)
        assert info["path"] == str(checkpoint.with_name("checkpoint" + EXPORT_FORMATS[format]))
        assert (info["height"], info["width"]) == (config.height, config.width)
        np.testing.assert_allclose(load_exported(info["path"])(images).numpy(), expected, rtol=0, atol=1e-4)
        meta = read_export_metadata(info["path"])
        assert (meta["input"]["height"], meta["input"]["width"]) == (config.height, config.width)
        assert meta["input"]["normalization"]["mean"] == [0.485, 0.456, 0.406]
        assert meta["output"]["shape"][1] == expected.shape[1]
        assert sum(b - a for a, b in meta["output"]["branches"].values()) == expected.shape[1]
    files = sorted((root / "bounding_box_test").glob("*.jpg"))[:5]
    reference = ImageFeatureExtractor(checkpoint, batch_size=2)(files)               # (5, D), batched 2 + 2 + 1
    assert reference.shape == (5, expected.shape[1])
    for format in sorted(EXPORT_FORMATS):
        exported = ImageFeatureExtractor(checkpoint.with_name("checkpoint" + EXPORT_FORMATS[format]))
        np.testing.assert_allclose(exported(files).numpy(), reference.numpy(), rtol=0, atol=1e-4)
        pil = [Image.open(f) for f in files[:2]]
        np.testing.assert_allclose(exported(pil).numpy(), reference[:2].numpy(), rtol=0, atol=1e-4)
        array = np.asarray(Image.open(files[0]).convert("RGB"))
        np.testing.assert_allclose(exported(array).numpy(), reference[:1].numpy(), rtol=0, atol=1e-4)
    out = export_checkpoint(checkpoint, tmp_path / "elsewhere" / "model.onnx")
    assert out["path"] == str(tmp_path / "elsewhere" / "model.onnx")


def test_errors_name_the_problem(model, tmp_path):
    with pytest.raises(ValueError, match="format must be one of"):
        export_model(model, tmp_path / "m.tflite", "tflite", height=H, width=W)
    with pytest.raises(FileNotFoundError, match="checkpoint: no file at"):
        export_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="format must be one of"):
        export_checkpoint(tmp_path / "missing.pt", format="tensorrt")
    with pytest.raises(ValueError, match="the onnx suffix, but the format is torchscript"):
        export_model(model, tmp_path / "m.onnx", "torchscript", height=H, width=W)
    torch.save({"model": {}}, tmp_path / "weights.pt")
    with pytest.raises(FileExistsError, match="never replaces one"):
        export_model(model, tmp_path / "weights.pt", "torchscript", height=H, width=W)
    with pytest.raises(TypeError, match="expected an image file path"):
        path = export_model(model, tmp_path / "m.torchscript.pt", height=H, width=W)["path"]
        ImageFeatureExtractor(path)(3.5)


def test_default_format_is_torchscript_and_failed_exports_leave_the_old_file(model, tmp_path):
    info = export_model(model, tmp_path / "model.pt", height=H, width=W)
    assert info["format"] == "torchscript"
    before = (tmp_path / "model.pt").read_bytes()
    with pytest.raises(RuntimeError, match="differs from PyTorch"):
        export_model(model, tmp_path / "model.pt", height=H, width=W, atol=-1.0)   # no file can pass
    assert (tmp_path / "model.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]           # no temporary file left
