"""The digits classifier as evaluator: shipped weights, determinism, FID, feature distance."""

import pytest
import torch

from dd.metrics.digits import (
    FIDFeatureExtractor,
    class_accuracy,
    default_classifier,
    feature_distance,
    frechet_distance,
    load_classifier,
)
from teachers.data import load_digits_split


@pytest.fixture(scope="module")
def heldout():
    return load_digits_split("heldout")


def test_shipped_classifier_recognises_heldout_digits(heldout):
    assert class_accuracy(heldout.images_01(), heldout.labels) >= 0.97


def test_evaluator_is_deterministic(heldout):
    images = heldout.images_01()[:64]
    first = default_classifier().features(images)
    second = load_classifier().features(images)  # a fresh load gives the same numbers
    assert torch.equal(first, second)
    assert not default_classifier().training
    fid_a = frechet_distance(images, heldout.images_01()[64:200])
    fid_b = frechet_distance(images, heldout.images_01()[64:200])
    assert fid_a == fid_b


def test_a_classifier_of_another_data_set_loads_with_its_own_config(tmp_path):
    """``load_classifier(path)`` takes the config of the entry beside the file (the shipped
    entry's 10 classes did not fit a 3-class classifier: its strict load failed)."""
    from PIL import Image

    from dd.cli import main as dd_main

    data = tmp_path / "shapes"
    for index, name in enumerate(("a", "b", "c")):
        (data / name).mkdir(parents=True)
        Image.new("RGB", (16, 16), (80 * index, 0, 0)).save(data / name / "0.png")
    out = tmp_path / "weights"
    argv = ["train-teacher", "--family", "classifier", "--out", str(out), "--data-dir", str(data)]
    assert dd_main([*argv, "--classifier-steps", "2", "--no-progress"]) == 0
    model = load_classifier(out / "classifier-shapes.safetensors")
    assert model.config.num_classes == 3 and not model.training
    with pytest.raises(FileNotFoundError, match="no classifier entry for other.safetensors"):
        load_classifier(out / "other.safetensors")


def test_fid_separates_real_from_noise(heldout):
    train = load_digits_split("train")
    floor = frechet_distance(heldout.images_01(), train.images_01())
    noise = frechet_distance(torch.rand(360, 3, 16, 16), train.images_01())
    assert floor < 10 and noise > 20 * floor
    # Images the evaluator would misread are refused: uint8 (read as floats up to 255) and
    # [-1, 1] (read as darker images) gave a wrong FID without an error.
    real = heldout.images_01()
    for wrong, message in (
        ((real * 255).round().to(torch.uint8), "float images"),
        (real * 2 - 1, r"must be in \[0, 1\]"),
    ):
        with pytest.raises(ValueError, match=message):
            frechet_distance(wrong, train.images_01())
        with pytest.raises(ValueError, match=message):
            class_accuracy(wrong, heldout.labels)
    with pytest.raises(ValueError, match="float images"):  # a distance of 0 before
        eight_bit = (real[:4] * 255).round().to(torch.uint8)
        feature_distance(eight_bit[:2], eight_bit[2:])
    with pytest.raises(ValueError, match="no images to classify"):  # a bare torch.cat error
        class_accuracy(real[:0], heldout.labels[:0])


def test_fid_extractor_takes_uint8_and_float(heldout):
    extractor = FIDFeatureExtractor(default_classifier())
    images = heldout.images_01()[:8]
    as_uint8 = (images * 255).round().to(torch.uint8)
    assert extractor.num_features == 64
    assert torch.allclose(extractor(images), extractor(as_uint8), atol=0.05)  # 8-bit rounding


def test_feature_distance_is_a_differentiable_distance(heldout):
    a = heldout.images_01()[:6].clone().requires_grad_(True)
    b = heldout.images_01()[6:12]
    distance = feature_distance(a, b)
    assert distance.shape == (6,) and (distance > 0).all()
    distance.sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert torch.allclose(feature_distance(b, b), torch.zeros(6))
    with pytest.raises(ValueError, match="shapes differ"):
        feature_distance(a, b[:3])


def test_wrong_image_size_is_rejected():
    with pytest.raises(ValueError, match="16, 16"):
        default_classifier().features(torch.rand(2, 3, 32, 32))
