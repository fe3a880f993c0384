"""Drawing primitives for the generated datasets (numpy + OpenCV only).

Shapes are returned as polygons (``(N, 2)`` float arrays of ``x, y``
vertices) so the same geometry gives the rendered pixels, the instance mask
and the COCO polygon. Colours and textures are drawn independently of the
class, so a model has to learn the outline, not a colour lookup.
"""

from typing import Tuple

import cv2
import numpy as np

#: Shape classes shared by the detection and classification generators.
SHAPE_CLASSES = (
    'circle',
    'triangle',
    'square',
    'star',
    'cross',
    'crescent',
)


def _regular(n: int, phase: float) -> np.ndarray:
    ang = phase + np.arange(n) * 2 * np.pi / n
    return np.stack([np.cos(ang), np.sin(ang)], axis=1)


def _unit_shape(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Vertices of a shape of radius ~1 centred on the origin."""
    if kind == 'circle':
        return _regular(40, 0.0)
    if kind == 'triangle':
        return _regular(3, -np.pi / 2)
    if kind == 'square':
        return _regular(4, np.pi / 4)
    if kind == 'star':
        n = int(rng.integers(5, 7))
        outer = _regular(n, -np.pi / 2)
        inner = _regular(n, -np.pi / 2 + np.pi / n) * rng.uniform(0.38, 0.5)
        return np.stack([outer, inner], axis=1).reshape(-1, 2)
    if kind == 'cross':
        t = rng.uniform(0.28, 0.4)
        q = [(t, 1), (t, t), (1, t), (1, -t), (t, -t), (t, -1)]
        q += [(-t, -1), (-t, -t), (-1, -t), (-1, t), (-t, t), (-t, 1)]
        return np.array(q, dtype=np.float64)
    if kind == 'crescent':
        # outer arc of the unit circle, inner arc of a shifted circle
        d, r2 = rng.uniform(0.35, 0.5), rng.uniform(0.75, 0.9)
        a = np.arccos(np.clip((1 + d * d - r2 * r2) / (2 * d), -1, 1))
        outer = np.linspace(a, 2 * np.pi - a, 28)
        ox, oy = np.cos(outer), np.sin(outer)
        # intersection points seen from the inner circle's centre (d, 0)
        b = np.arctan2(np.sin(a), np.cos(a) - d)
        inner = np.linspace(2 * np.pi - b, b, 20)
        ix, iy = d + r2 * np.cos(inner), r2 * np.sin(inner)
        return np.stack(
            [np.concatenate([ox, ix]), np.concatenate([oy, iy])], axis=1
        )
    raise ValueError(f'unknown shape kind {kind!r}')


def shape_polygon(
    kind: str,
    rng: np.random.Generator,
    center: Tuple[float, float],
    radius: float,
) -> np.ndarray:
    """A randomly rotated and slightly stretched shape polygon.

    Args:
        kind (str): One of :data:`SHAPE_CLASSES`.
        rng (np.random.Generator): Source of randomness.
        center (tuple[float, float]): ``(x, y)`` centre in pixels.
        radius (float): Circumradius in pixels.

    Returns:
        np.ndarray: ``(N, 2)`` float vertices ``(x, y)``.
    """
    pts = _unit_shape(kind, rng)
    stretch = rng.uniform(0.8, 1.2)
    pts = pts * np.array([stretch, 1.0 / stretch])
    theta = rng.uniform(0, 2 * np.pi)
    rot = np.array(
        [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    )
    return pts @ rot.T * radius + np.asarray(center, dtype=np.float64)


def fill_mask(poly: np.ndarray, height: int, width: int) -> np.ndarray:
    """Rasterize a polygon into a boolean ``(height, width)`` mask."""
    mask = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
    return mask.astype(bool)


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """A random RGB colour as a float array in ``[0, 255]``."""
    return rng.uniform(0, 255, size=3)


def textured_patch(
    rng: np.random.Generator, height: int, width: int
) -> np.ndarray:
    """A class-agnostic texture: two random colours mixed by a pattern.

    Returns:
        np.ndarray: ``(height, width, 3)`` float image.
    """
    c0, c1 = random_colour(rng), random_colour(rng)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    style = rng.integers(0, 4)
    if style == 0:  # flat
        w = np.zeros((height, width), np.float32)
    elif style == 1:  # linear gradient
        a = rng.uniform(0, 2 * np.pi)
        w = np.cos(a) * xx + np.sin(a) * yy
        w = (w - w.min()) / max(float(np.ptp(w)), 1.0)
    elif style == 2:  # soft stripes at any angle
        a, f = rng.uniform(0, np.pi), rng.uniform(0.05, 0.3)
        w = 0.5 + 0.5 * np.sin(f * (np.cos(a) * xx + np.sin(a) * yy))
    else:  # blotches
        small = rng.uniform(0, 1, size=(max(height // 16, 2),) * 2)
        w = cv2.resize(small.astype(np.float32), (width, height))
    w = w[..., None] * rng.uniform(0.2, 1.0)
    return c0 * (1 - w) + c1 * w


def noisy_background(
    rng: np.random.Generator, height: int, width: int
) -> np.ndarray:
    """A textured, noisy background with unlabelled clutter.

    Returns:
        np.ndarray: ``(height, width, 3)`` float image.
    """
    img = textured_patch(rng, height, width)
    img += rng.normal(0, rng.uniform(4, 20), size=img.shape)
    return draw_clutter(rng, img)


def draw_clutter(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Draw distractors (lines, arcs, small blobs) that are not objects."""
    height, width = img.shape[:2]
    canvas = np.ascontiguousarray(img.astype(np.float32))
    for _ in range(int(rng.integers(3, 10))):
        colour = tuple(float(c) for c in random_colour(rng))
        kind = rng.integers(0, 3)
        p0 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        if kind == 0:
            p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.line(canvas, p0, p1, colour, int(rng.integers(1, 4)))
        elif kind == 1:
            axes = (int(rng.integers(5, 40)), int(rng.integers(5, 40)))
            start = float(rng.uniform(0, 360))
            cv2.ellipse(
                canvas,
                p0,
                axes,
                float(rng.uniform(0, 180)),
                start,
                start + float(rng.uniform(40, 200)),
                colour,
                int(rng.integers(1, 3)),
            )
        else:
            cv2.circle(canvas, p0, int(rng.integers(2, 6)), colour, -1)
    return canvas


def finish_image(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Add sensor noise and light blur, clip and convert to ``uint8``."""
    img = img + rng.normal(0, rng.uniform(2, 10), size=img.shape)
    if rng.uniform() < 0.5:
        img = cv2.GaussianBlur(img.astype(np.float32), (3, 3), 0)
    return np.clip(img, 0, 255).astype(np.uint8)
