"""The tf.data pipeline: shapes, labels that never leave their images, the same pixels as uploads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kidney_lab.data.classes import CLASS_NAMES
from kidney_lab.data.discover import scan_dataset
from kidney_lab.data.pipeline import Augmentation, make_dataset, prepare_scan
from kidney_lab.data.scan import read_scan
from tests.helpers import encode


@pytest.fixture
def coded_frame(tmp_path: Path) -> pd.DataFrame:
    """Images whose constant pixel value encodes their label: 40 * (class index + 1)."""
    rows = []
    for index, label in enumerate(CLASS_NAMES):
        for number in range(6):
            path = tmp_path / f"{label}-{number}.png"
            path.write_bytes(encode(np.full((20, 30), 40 * (index + 1), np.uint8)))
            rows.append({"path": str(path), "label": label})
    return pd.DataFrame(rows)


def _decoded_labels(images: np.ndarray) -> np.ndarray:
    centre = images[:, images.shape[1] // 2, images.shape[2] // 2, 0]
    return np.round(centre / 40).astype(int) - 1


def test_batches_have_the_promised_shape_and_range(coded_frame):
    images, labels = next(iter(make_dataset(coded_frame, 16, batch_size=5)))
    assert images.shape == (5, 16, 16, 3) and images.dtype.name == "float32"
    assert labels.shape == (5, 4) and labels.dtype.name == "float32"
    assert 0 <= images.numpy().min() and images.numpy().max() <= 255
    np.testing.assert_array_equal(labels.numpy().sum(axis=1), 1)


@pytest.mark.parametrize("cache", [True, False])
def test_labels_never_leave_their_images(coded_frame, cache):
    dataset = make_dataset(coded_frame, 16, batch_size=7, training=True, augmentation=Augmentation.off(),
                           seed=5, cache=cache, with_paths=True)
    for _epoch in range(2):
        seen = 0
        for images, labels, paths in dataset:
            label_ids = labels.numpy().argmax(axis=1)
            np.testing.assert_array_equal(_decoded_labels(images.numpy()), label_ids)
            for label_id, path in zip(label_ids, paths.numpy()):
                assert Path(path.decode()).name.startswith(CLASS_NAMES[label_id])
            seen += len(label_ids)
        assert seen == len(coded_frame)


def test_training_order_is_shuffled_each_epoch_and_evaluation_is_not(coded_frame):
    def order(dataset):
        return [path.decode() for _, _, paths in dataset for path in paths.numpy()]

    training = make_dataset(coded_frame, 8, batch_size=4, training=True, with_paths=True, seed=1)
    assert order(training) != order(training)
    evaluation = make_dataset(coded_frame, 8, batch_size=4, with_paths=True)
    assert order(evaluation) == coded_frame["path"].tolist() == order(evaluation)


def test_augmentation_changes_training_images_only(coded_frame, tmp_path):
    path = tmp_path / "structured.png"
    pixels = np.zeros((32, 32), np.uint8)
    pixels[4:12, 4:20] = 250
    path.write_bytes(encode(pixels))
    frame = pd.DataFrame([{"path": str(path), "label": "Stone"}] * 8)
    plain = next(iter(make_dataset(frame, 32, batch_size=8)))[0].numpy()
    augmented = next(iter(make_dataset(frame, 32, batch_size=8, training=True, seed=0)))[0].numpy()
    assert np.allclose(plain, plain[0])
    assert not np.allclose(augmented, plain)
    assert 0 <= augmented.min() and augmented.max() <= 255


def test_aspect_ratio_kept_with_black_padding(tmp_path):
    path = tmp_path / "wide.png"
    path.write_bytes(encode(np.full((20, 40), 200, np.uint8)))
    frame = pd.DataFrame([{"path": str(path), "label": "Cyst"}])
    image = next(iter(make_dataset(frame, 40, batch_size=1)))[0].numpy()[0, :, :, 0]
    assert image[20, 20] == pytest.approx(200, abs=1)
    assert image[:9].max() == 0 and image[-9:].max() == 0
    assert (image[11:29] > 190).all()


@pytest.mark.parametrize(
    ("name", "pixels", "image_format"),
    [
        ("gray.png", np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) % 251, "PNG"),
        ("sixteen.png", (np.arange(64 * 48).reshape(48, 64) * 7).astype(np.uint16), "PNG"),
        ("color.jpg", np.dstack([np.arange(64 * 48).reshape(48, 64) % 200] * 3), "JPEG"),
        ("gray.tif", np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) % 199, "TIFF"),
    ],
)
def test_pipeline_and_upload_reader_give_the_same_input(tmp_path, name, pixels, image_format):
    path = tmp_path / name
    path.write_bytes(encode(pixels.astype(np.uint16 if pixels.dtype == np.uint16 else np.uint8), image_format))
    frame = pd.DataFrame([{"path": str(path), "label": "Normal"}])
    from_pipeline = next(iter(make_dataset(frame, 32, batch_size=1)))[0].numpy()
    from_upload = prepare_scan(read_scan(path.read_bytes(), name=name).image, 32)
    assert from_upload.shape == from_pipeline.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(from_upload, from_pipeline, atol=1.0)


def test_scan_table_columns_route_decoding(phantom_root):
    table = scan_dataset(phantom_root).table.head(8)
    images, labels = next(iter(make_dataset(table, 32, batch_size=8)))
    assert images.shape == (8, 32, 32, 3)
    assert [CLASS_NAMES[i] for i in labels.numpy().argmax(axis=1)] == table["label"].tolist()


def test_bad_arguments(coded_frame):
    with pytest.raises(ValueError, match="No images"):
        make_dataset(coded_frame.iloc[:0], 16)
    with pytest.raises(ValueError, match="Unknown labels"):
        make_dataset(coded_frame.assign(label="Kidney"), 16)
    with pytest.raises(ValueError, match="at least 8"):
        make_dataset(coded_frame, 4)


def test_augmentation_is_reproducible_for_a_seed_and_new_each_epoch(tmp_path):
    path = tmp_path / "structured.png"
    pixels = np.zeros((32, 32), np.uint8)
    pixels[4:12, 4:20] = 250
    path.write_bytes(encode(pixels))
    frame = pd.DataFrame([{"path": str(path), "label": "Cyst"}] * 4)

    def epochs(seed: int) -> list[np.ndarray]:
        dataset = make_dataset(frame, 32, batch_size=4, training=True, seed=seed)
        return [next(iter(dataset))[0].numpy() for _ in range(2)]

    first, second = epochs(7)
    again_first, again_second = epochs(7)
    np.testing.assert_array_equal(first, again_first)
    np.testing.assert_array_equal(second, again_second)
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, epochs(8)[0])


def test_each_augmentation_does_what_it_says():
    import tensorflow as tf

    image = np.zeros((1, 40, 40, 1), np.float32)
    image[0, 10:30, 4:12] = 200.0
    seed = tf.constant([3, 4], tf.int64)
    flipped = Augmentation(flip=True, rotation=0, zoom=0, brightness=0, contrast=0)
    # Over several seeds a flip-only augmentation returns either the image or its mirror.
    outcomes = {bool(np.allclose(flipped(image, tf.constant([s, 0], tf.int64)).numpy(), image[:, :, ::-1], atol=1e-3))
                for s in range(8)}
    assert outcomes == {True, False}
    brighter = Augmentation(flip=False, rotation=0, zoom=0, brightness=0.2, contrast=0)(image, seed).numpy()
    shift = brighter[0, 0, 0, 0]
    assert 0 < abs(shift) <= 0.2 * 255 + 1e-3
    np.testing.assert_allclose(brighter[0, 10:30, 4:12], np.clip(200 + shift, 0, 255), atol=1e-3)
    rotated = Augmentation(flip=False, rotation=0.2, zoom=0, brightness=0, contrast=0)(image, seed).numpy()
    assert not np.allclose(rotated, image) and rotated.sum() == pytest.approx(image.sum(), rel=0.15)
    with pytest.raises(ValueError, match="rotation"):
        Augmentation(rotation=1.5)


@pytest.mark.parametrize(("height", "width"), [(512, 512), (1100, 1400), (300, 200)])
def test_large_reductions_are_antialiased(height, width):
    import tensorflow as tf

    from kidney_lab.data.pipeline import resize_with_pad

    # A one-pixel checkerboard must come out mid-grey, not as aliasing stripes.
    board = ((np.indices((height, width)).sum(axis=0) % 2) * 255).astype(np.float32)[..., None]
    small = resize_with_pad(board, 96).numpy()[..., 0]
    scale = min(96 / height, 96 / width)
    inner_h, inner_w = round(height * scale), round(width * scale)
    top, left = (96 - inner_h) // 2, (96 - inner_w) // 2
    inner = small[top + 2 : top + inner_h - 2, left + 2 : left + inner_w - 2]
    assert np.abs(inner - 127.5).max() < 40
    reference = tf.image.resize(board, [inner_h, inner_w], antialias=True).numpy()[..., 0]
    assert np.abs(small[top : top + inner_h, left : left + inner_w] - reference)[2:-2, 2:-2].mean() < 10


def test_manifest_formats_spare_opening_every_file(phantom_root, tmp_path, monkeypatch):
    import kidney_lab.data.pipeline as pipeline
    from kidney_lab.data.audit import audit_dataset
    from kidney_lab.data.split import get_or_make_split, load_split

    split, _ = get_or_make_split(audit_dataset(scan_dataset(phantom_root)), tmp_path, "grouped")
    stored = load_split(tmp_path, split.split_id)
    assert set(stored.manifest["format"]) == {"PNG"} and set(stored.manifest["mode"]) == {"L"}

    def must_not_open(path):
        raise AssertionError(f"opened {path}")

    monkeypatch.setattr(pipeline, "_format_and_mode", must_not_open)
    images, _ = next(iter(make_dataset(stored.subset("test"), 32, batch_size=4)))
    assert images.shape == (4, 32, 32, 3)
