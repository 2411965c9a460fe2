"""Draw the synthetic sample images shipped in samples/ (deterministic; Pillow and numpy only).

Each file covers one format or mode that the server's image decoding must handle. The scenes are
simple, text-free and visually distinct, so a caption of one is recognisably not about another.

    python scripts/make_samples.py [OUT_DIR]    # default: samples/ next to this script's parent
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SKY = (110, 170, 235)
GRASS = (60, 150, 60)
RED = (220, 30, 30)
GREEN = (0, 160, 0)
YELLOW = (250, 210, 20)
EXIF_ORIENTATION = 0x0112


def vertical_gradient(size: tuple[int, int], top: tuple[int, ...], bottom: tuple[int, ...]) -> Image.Image:
    width, height = size
    t = np.linspace(0.0, 1.0, height)[:, None, None]
    rows = (1 - t) * np.array(top) + t * np.array(bottom)
    return Image.fromarray(np.repeat(rows, width, axis=1).round().astype(np.uint8))


def sky_circle() -> Image.Image:
    """A red sun over green ground under a blue sky, 400x300."""
    image = vertical_gradient((400, 300), (70, 130, 220), SKY)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 220, 399, 299), fill=GRASS)
    draw.ellipse((240, 50, 330, 140), fill=RED)
    return image


def green_stripes_rgba() -> Image.Image:
    """Opaque green vertical stripes with fully transparent gaps, over a half-transparent red band."""
    image = Image.new("RGBA", (200, 120), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    for x in range(0, 200, 40):
        draw.rectangle((x, 0, x + 19, 99), fill=(*GREEN, 255))
    draw.rectangle((0, 100, 199, 119), fill=(255, 0, 0, 128))
    return image


def checkerboard_palette() -> Image.Image:
    """A navy and cream checkerboard of 20-pixel squares with an orange diagonal, palette mode."""
    image = Image.new("P", (160, 120), 0)
    image.putpalette([20, 30, 90, 245, 235, 210, 240, 130, 20])
    draw = ImageDraw.Draw(image)
    for row in range(6):
        for col in range(8):
            if (row + col) % 2:
                draw.rectangle((col * 20, row * 20, col * 20 + 19, row * 20 + 19), fill=1)
    draw.line((0, 0, 159, 119), fill=2, width=5)
    return image


def gray_moon() -> Image.Image:
    """A dark disc on a light-to-dark vertical gradient, 8-bit grayscale, 64x48 (the smallest)."""
    image = vertical_gradient((64, 48), (230, 230, 230), (40, 40, 40)).convert("L")
    ImageDraw.Draw(image).ellipse((20, 10, 44, 34), fill=10)
    return image


def gray16_ramp() -> Image.Image:
    """A left-to-right ramp over the full 16-bit range 0..65535, 256x64."""
    ramp = np.linspace(0, 65535, 256).round().astype(np.uint16)
    return Image.fromarray(np.tile(ramp, (64, 1)))  # mode I;16


def house() -> Image.Image:
    """A brown house with a red roof and a yellow window, on grass under a sky, 240x180."""
    image = Image.new("RGB", (240, 180), SKY)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 140, 239, 179), fill=GRASS)
    draw.rectangle((70, 80, 170, 150), fill=(140, 90, 50))
    draw.polygon([(60, 80), (120, 30), (180, 80)], fill=RED)
    draw.rectangle((85, 95, 110, 120), fill=YELLOW)
    draw.rectangle((130, 105, 152, 150), fill=(70, 40, 20))
    return image


def gradient_square() -> Image.Image:
    """A yellow square on a purple-to-orange horizontal gradient, 300x200."""
    t = np.linspace(0.0, 1.0, 300)[None, :, None]
    row = (1 - t) * np.array([90, 40, 150]) + t * np.array([250, 140, 40])
    image = Image.fromarray(np.repeat(row, 200, axis=0).round().astype(np.uint8))
    ImageDraw.Draw(image).rectangle((110, 60, 190, 140), fill=YELLOW)
    return image


def traffic_light_frames() -> list[Image.Image]:
    """Two frames of a disc on grey, 96x64: red first, then green."""
    frames = []
    for colour in (RED, GREEN):
        frame = Image.new("RGB", (96, 64), (90, 90, 90))
        ImageDraw.Draw(frame).ellipse((28, 12, 68, 52), fill=colour)
        frames.append(frame)
    return frames


def sailboat() -> Image.Image:
    """A white sail and a brown hull on a blue sea, portrait 120x160."""
    image = vertical_gradient((120, 160), (170, 210, 240), (20, 70, 150))
    draw = ImageDraw.Draw(image)
    draw.polygon([(60, 30), (60, 110), (100, 110)], fill=(250, 250, 250))
    draw.line((58, 25, 58, 118), fill=(60, 40, 20), width=3)
    draw.polygon([(25, 115), (100, 115), (88, 132), (37, 132)], fill=(120, 70, 30))
    return image


def colour_tiles() -> Image.Image:
    """A 3x2 grid of flat colour tiles (red, green, blue / cyan, magenta, yellow), 150x100."""
    image = Image.new("RGB", (150, 100))
    draw = ImageDraw.Draw(image)
    colours = [(220, 40, 40), (40, 180, 40), (40, 60, 220), (40, 200, 200), (200, 40, 200), YELLOW]
    for index, colour in enumerate(colours):
        x, y = (index % 3) * 50, (index // 3) * 50
        draw.rectangle((x, y, x + 49, y + 49), fill=colour)
    return image


def tower_upright() -> Image.Image:
    """A grey tower with a red top between sky and grass, portrait 90x150 as it should be seen."""
    image = Image.new("RGB", (90, 150), SKY)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 120, 89, 149), fill=GRASS)
    draw.rectangle((35, 30, 55, 125), fill=(130, 130, 130))
    draw.polygon([(30, 30), (45, 8), (60, 30)], fill=RED)
    return image


def make_samples(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(name: str, image: Image.Image, **options: object) -> None:
        path = out_dir / name
        image.save(path, **options)
        written.append(path)

    save("sky_circle.jpg", sky_circle(), quality=85)
    save("green_stripes_rgba.png", green_stripes_rgba(), optimize=True)
    save("checkerboard_palette.png", checkerboard_palette(), optimize=True)
    save("gray_moon.png", gray_moon())
    save("gray16_ramp.png", gray16_ramp())
    save("house_cmyk.jpg", house().convert("CMYK"), quality=90)
    save("gradient_square.webp", gradient_square(), quality=85, method=6)
    first, *rest = traffic_light_frames()
    save("traffic_light.gif", first, save_all=True, append_images=rest, duration=500, loop=0)
    save("sailboat.bmp", sailboat())
    save("colour_tiles.tif", colour_tiles(), compression="tiff_lzw")

    # Stored turned a quarter to the left, with EXIF orientation 6 ("rotate 90 clockwise to view"),
    # as a phone held upright writes it: stored 150x90, seen 90x150.
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    stored = tower_upright().transpose(Image.Transpose.ROTATE_90)
    save("tower_exif_rotate90.jpg", stored, quality=90, exif=exif)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parent.parent / "samples"
    parser.add_argument("out_dir", nargs="?", type=Path, default=default)
    args = parser.parse_args()
    total = 0
    for path in make_samples(args.out_dir):
        size = path.stat().st_size
        total += size
        with Image.open(path) as image:
            print(f"{path.name:28} {image.format:5} {image.mode:6} {image.width}x{image.height} {size} bytes")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
