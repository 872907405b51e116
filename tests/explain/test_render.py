"""Overlays are RGB (hot is red in channel 0), blend by opacity, and save as PNG."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from kidney_lab import errors
from kidney_lab.explain import render
from kidney_lab.explain.cam import load_image


def hot_spot(shape: tuple[int, int] = (40, 60)) -> np.ndarray:
    """A heat map that is 1 in a square at rows 10-19, columns 30-39 and 0 elsewhere."""
    heat = np.zeros(shape, np.float32)
    heat[10:20, 30:40] = 1.0
    return heat


@pytest.mark.parametrize("colormap", ["turbo", "jet"])
def test_a_hot_spot_is_red_in_channel_0_and_cold_is_blue_in_channel_2(colormap) -> None:
    drawn = render.overlay(np.zeros((40, 60), np.uint8), hot_spot(), opacity=1.0, colormap=colormap)
    assert drawn.dtype == np.uint8 and drawn.shape == (40, 60, 3)
    red, green, blue = drawn[15, 35]
    assert red > 100 and red > 4 * max(green, blue), f"hot pixel {drawn[15, 35]} is not red"
    red, green, blue = drawn[0, 0]
    assert blue > red and blue > green, f"cold pixel {drawn[0, 0]} is not blue"


def test_the_colour_table_runs_from_blue_to_red() -> None:
    table = render.colormap_table("turbo")
    assert table.shape == (256, 3) and table.dtype == np.uint8
    assert table[0, 2] > table[0, 0] and table[-1, 0] > table[-1, 2]
    assert table[128, 1] > 200, "turbo is green-yellow in the middle"


def test_opacity_blends_the_scan_and_the_colours() -> None:
    scan = load_image(np.full((40, 60), 200, np.uint8))
    heat = hot_spot()
    np.testing.assert_array_equal(render.overlay(scan, heat, opacity=0.0), scan.to_uint8())
    colours = render.colorize(heat)
    np.testing.assert_array_equal(render.overlay(scan, heat, opacity=1.0), colours)
    half = render.overlay(scan, heat, opacity=0.5).astype(int)
    expected = (200 + colours.astype(int)) / 2
    assert np.abs(half - expected).max() <= 1
    mostly_scan = render.overlay(scan, heat, opacity=0.1).astype(int)
    assert np.abs(mostly_scan - 200).mean() < np.abs(half - 200).mean()


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"opacity": 1.5}, "between 0 and 1"),
        ({"opacity": -0.1}, "between 0 and 1"),
        ({"colormap": "rainbow"}, "turbo, jet, viridis, inferno"),
        ({"heatmap": np.zeros((40, 61), np.float32)}, "does not have the image's size"),
    ],
)
def test_bad_overlay_arguments_are_refused(arguments, message) -> None:
    settings = {"image": np.zeros((40, 60), np.uint8), "heatmap": hot_spot(), **arguments}
    with pytest.raises(errors.ConfigError, match=message):
        render.overlay(**settings)


def test_png_bytes_hold_the_same_pixels() -> None:
    drawn = render.overlay(np.zeros((40, 60), np.uint8), hot_spot(), opacity=0.7)
    with Image.open(io.BytesIO(render.to_png(drawn))) as picture:
        assert picture.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(picture), drawn)
    with Image.open(io.BytesIO(render.to_png(hot_spot() * 0.5))) as picture:
        assert picture.mode == "L" and np.asarray(picture).max() == 128
    with pytest.raises(errors.ConfigError):
        render.to_png(np.zeros((4, 4, 2), np.uint8))
