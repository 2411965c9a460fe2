"""Draw a scene with Pillow: textured background, anti-aliased shapes, pixel noise."""

from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image, ImageDraw

from .generator import BACKGROUNDS, Scene, SceneObject

SUPERSAMPLE = 4


def _background(scene: Scene, side: int) -> np.ndarray:
    base = np.array(BACKGROUNDS[scene.background], dtype=np.float32)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    angle = math.radians(scene.texture_angle)
    along = x * math.cos(angle) + y * math.sin(angle)
    along = (along - along.min()) / (along.max() - along.min())  # 0 to 1 across the image
    amplitude = 255.0 * scene.texture_strength
    if scene.texture == "gradient":
        shade = (along - 0.5) * 2 * amplitude
    elif scene.texture == "stripes":
        shade = np.sign(np.sin(along * 2 * math.pi * 8)) * amplitude * 0.5
    elif scene.texture == "speckle":
        rng = np.random.default_rng(scene.seed + 1)
        coarse = rng.normal(0.0, 1.0, (8, 8)).astype(np.float32)
        shade = (
            np.kron(coarse, np.ones((side // 8 + 1, side // 8 + 1), np.float32))[:side, :side]
            * amplitude
            * 0.6
        )
    else:
        shade = np.zeros((side, side), np.float32)
    # Texture only darkens a white background and only lightens a black one: the name stays right.
    if scene.background == "white":
        shade = -np.abs(shade)
    elif scene.background == "black":
        shade = np.abs(shade)
    return base[None, None, :] + shade[:, :, None]


def _polygon(obj: SceneObject, side: int) -> list[tuple[float, float]]:
    cx, cy = obj.centre[0] * side, obj.centre[1] * side
    r = obj.radius * side
    if obj.shape == "square":
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        points = [(px * r * 0.75, py * r * 0.75) for px, py in corners]
    elif obj.shape == "triangle":
        points = [
            (r * math.cos(a), r * math.sin(a) + r * 0.15)
            for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        ]
    elif obj.shape == "star":
        points = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            radius = r if k % 2 == 0 else r * 0.45
            points.append((radius * math.cos(a), radius * math.sin(a)))
    else:
        raise ValueError(f"not a polygon: {obj.shape}")
    t = math.radians(obj.rotation)
    return [
        (cx + x * math.cos(t) - y * math.sin(t), cy + x * math.sin(t) + y * math.cos(t)) for x, y in points
    ]


def _draw(draw: ImageDraw.ImageDraw, obj: SceneObject, side: int) -> None:
    if obj.shape == "circle":
        cx, cy, r = obj.centre[0] * side, obj.centre[1] * side, obj.radius * side * 0.9
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=obj.rgb)
    else:
        draw.polygon(_polygon(obj, side), fill=obj.rgb)


def render_scene(scene: Scene, size: int = 64) -> Image.Image:
    """The scene as an RGB image of ``size`` x ``size`` pixels (deterministic)."""
    big = size * SUPERSAMPLE
    canvas = Image.fromarray(np.clip(_background(scene, big), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        _draw(draw, obj, big)
    image = canvas.resize((size, size), Image.Resampling.BOX)
    if scene.noise > 0:
        rng = np.random.default_rng(random.Random(scene.seed).getrandbits(32))
        pixels = np.asarray(image, dtype=np.float32) + rng.normal(0.0, scene.noise, (size, size, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))
    return image
