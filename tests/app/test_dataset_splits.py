"""The Dataset page's split preview: clusters per class and subset, and the grouped split's warnings."""

from __future__ import annotations

from kidney_lab.data.classes import CLASS_NAMES


def test_split_preview_shows_clusters_per_class_and_subset(open_app, tmp_path, make_dataset_folder):
    # Eight distinct images per class are eight singleton clusters: 2 test, 1 validation, 5 train.
    root = make_dataset_folder(per_class=8)
    app = open_app(tmp_path / "workspace", page="pages/dataset.py", data=root)
    assert not app.exception and not app.error, [element.value for element in app.error]
    tables = [element.value for element in app.table]
    assert len(tables) == 2  # random, grouped
    grouped = tables[1]
    assert list(grouped.columns) == list(CLASS_NAMES)
    assert list(grouped.index) == ["train", "validation", "test"]
    assert grouped.loc["test"].tolist() == [2] * len(CLASS_NAMES)
    assert grouped.loc["validation"].tolist() == [1] * len(CLASS_NAMES)
    warnings = [element.value for element in app.warning if element.value.startswith("Grouped split:")]
    assert len(warnings) == len(CLASS_NAMES)
    assert all("2 series' recall" in warning for warning in warnings)
