"""Reads a world image back (:mod:`s2i.training.world`): object colour, shape, count and the emotion's palette.

Rules written for the world, no training: object pixels are the saturated ones
(every sky and ground is desaturated), their hue names the colour; 4-connected
blobs of the dominant colour are the objects, counted and shaped by how much of
their bounding box they fill (square ~1, circle ~0.8, triangle and diamond ~0.5)
and where they are widest (a triangle at its base, a diamond in its middle); the
emotion is the palette whose sky and ground are nearest the non-object pixels.

:func:`faithfulness` turns detections of generated images into rates: an image is
*faithful* when the colour and the shape its caption names are what it shows.
"""

from __future__ import annotations

import colorsys
import dataclasses
from collections.abc import Sequence

import numpy as np

from s2i.training.world import COLOURS, HORIZON, PALETTES, Scene

# A pixel belongs to an object when it is this saturated and this bright (HSV, 0-1);
# the world's skies and grounds stay below 0.45 saturation.
MIN_OBJECT_SATURATION = 0.55
MIN_OBJECT_VALUE = 0.25
# Blobs smaller than this (pixels) are noise, not objects.
MIN_BLOB_PIXELS = 8
SQUARE_FILL = 0.9
CIRCLE_FILL = 0.68
HUES = {name: colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] for name, rgb in COLOURS.items()}


@dataclasses.dataclass(frozen=True)
class Detection:
    """What an image shows; ``None`` where nothing could be read (no object pixels)."""

    colour: str | None
    shape: str | None
    count: int
    emotion: str


def _hsv(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rgb = image.astype(np.float32) / 255.0
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    span = np.maximum(high - low, 1e-6)
    hue = np.select(
        [high == r, high == g],
        [((g - b) / span) % 6, (b - r) / span + 2],
        default=(r - g) / span + 4,
    )
    return hue / 6.0, saturation, high


def _colour_map(image: np.ndarray) -> np.ndarray:
    """Per pixel: the index into ``COLOURS`` of an object pixel's hue, or -1."""
    hue, saturation, value = _hsv(image)
    centres = np.array(list(HUES.values()))
    distance = np.abs(hue[..., None] - centres)
    distance = np.minimum(distance, 1.0 - distance)
    nearest = distance.argmin(axis=-1)
    return np.where((saturation >= MIN_OBJECT_SATURATION) & (value >= MIN_OBJECT_VALUE), nearest, -1)


def blobs(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of ``mask`` as arrays of ``(row, column)``, largest first."""
    seen = np.zeros_like(mask, dtype=bool)
    found = []
    height, width = mask.shape
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        stack, pixels = [start], []
        while stack:
            row, column = stack.pop()
            pixels.append((row, column))
            for r, c in ((row + 1, column), (row - 1, column), (row, column + 1), (row, column - 1)):
                if 0 <= r < height and 0 <= c < width and mask[r, c] and not seen[r, c]:
                    seen[r, c] = True
                    stack.append((r, c))
        found.append(np.array(pixels))
    return sorted(found, key=len, reverse=True)


def blob_shape(pixels: np.ndarray) -> str:
    """``circle``, ``square``, ``triangle`` or ``diamond`` from a blob's fill and width profile."""
    rows, columns = pixels[:, 0], pixels[:, 1]
    height, width = rows.max() - rows.min() + 1, columns.max() - columns.min() + 1
    fill = len(pixels) / (height * width)
    if fill >= SQUARE_FILL:
        return "square"
    if fill >= CIRCLE_FILL:
        return "circle"
    widths = np.bincount(rows - rows.min(), minlength=height)
    third = max(1, height // 3)
    # A triangle (apex up) is widest at its base; a diamond is as narrow at the bottom as at the top.
    return "triangle" if widths[-third:].mean() > 1.4 * widths[:third].mean() else "diamond"


def _emotion(image: np.ndarray, objects: np.ndarray) -> str:
    background = ~objects
    pixels = image.astype(np.float32)
    sky_mask, ground_mask = background.copy(), background.copy()
    sky_mask[HORIZON:] = False
    ground_mask[:HORIZON] = False

    def mean(mask: np.ndarray, fallback: np.ndarray) -> np.ndarray:
        return pixels[mask].mean(axis=0) if mask.any() else fallback

    sky = mean(sky_mask, pixels[:HORIZON].reshape(-1, 3).mean(axis=0))
    ground = mean(ground_mask, pixels[HORIZON:].reshape(-1, 3).mean(axis=0))
    distances = {
        name: float(np.linalg.norm(sky - palette.sky) + np.linalg.norm(ground - palette.ground))
        for name, palette in PALETTES.items()
    }
    return min(distances, key=distances.get)


def detect(image: np.ndarray) -> Detection:
    """Read ``uint8 [H, W, 3]`` ``image`` (the world's size) back into a :class:`Detection`."""
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"`image` must be uint8 [height, width, 3], got {image.dtype} {list(image.shape)}.")
    colours = _colour_map(image)
    emotion = _emotion(image, colours >= 0)
    counts = np.bincount(colours[colours >= 0].ravel(), minlength=len(COLOURS))
    if counts.sum() < MIN_BLOB_PIXELS:
        return Detection(colour=None, shape=None, count=0, emotion=emotion)
    dominant = int(counts.argmax())
    found = [blob for blob in blobs(colours == dominant) if len(blob) >= MIN_BLOB_PIXELS]
    if not found:
        return Detection(colour=list(COLOURS)[dominant], shape=None, count=0, emotion=emotion)
    shapes = [blob_shape(blob) for blob in found]
    # The largest blob breaks a tie (shapes are listed largest first).
    shape = max(dict.fromkeys(shapes), key=shapes.count)
    return Detection(colour=list(COLOURS)[dominant], shape=shape, count=len(found), emotion=emotion)


@dataclasses.dataclass(frozen=True)
class Faithfulness:
    """Rates over a set of (caption, image) pairs; ``faithful`` = colour and shape both right."""

    n: int
    faithful: float
    colour: float
    shape: float
    count: float
    emotion: float

    def as_dict(self) -> dict[str, float]:
        """For JSON reports."""
        return dataclasses.asdict(self)


def faithfulness(scenes: Sequence[Scene], detections: Sequence[Detection]) -> Faithfulness:
    """How often each detection shows what its scene's caption says."""
    if len(scenes) != len(detections) or not scenes:
        raise ValueError(
            f"`scenes` and `detections` must be equally long and not empty, got {len(scenes)}, {len(detections)}."
        )
    colour = [d.colour == s.colour for s, d in zip(scenes, detections, strict=True)]
    shape = [d.shape == s.shape for s, d in zip(scenes, detections, strict=True)]
    rates = {
        "faithful": [c and h for c, h in zip(colour, shape, strict=True)],
        "colour": colour,
        "shape": shape,
        "count": [d.count == s.count for s, d in zip(scenes, detections, strict=True)],
        "emotion": [d.emotion == s.emotion for s, d in zip(scenes, detections, strict=True)],
    }
    return Faithfulness(n=len(scenes), **{name: sum(hits) / len(hits) for name, hits in rates.items()})
