"""Fixtures for the provider tests: a small textured photo, as bytes and as a file:// URL."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def make_photo(width: int = 640, height: int = 360) -> bytes:
    """A PNG with structure everywhere (gradients and rings) and nothing near black, so any crop
    or zoom changes pixels and a black bar would stand out."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    red = 60 + 190 * x / max(1, width - 1)
    green = 60 + 190 * y / max(1, height - 1)
    blue = 150 + 100 * np.sin(np.hypot(x - width / 2, y - height / 2) / 5)
    pixels = np.clip(np.stack([red, green, blue], axis=-1), 50, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="session", name="make_photo")
def make_photo_fixture() -> Callable[[int, int], bytes]:
    return make_photo


@pytest.fixture(scope="session")
def photo() -> bytes:
    return make_photo()


@pytest.fixture
def photo_url(tmp_path: Path, photo: bytes) -> str:
    path = tmp_path / "input image.png"  # a space, so the URL needs escaping
    path.write_bytes(photo)
    return path.as_uri()
