"""Pixels: the images and videos of the input box of Figure 2 (PaLM2-VAdapter, arXiv 2402.10896).

An image file in any PIL mode becomes the normalized (3, S, S) tensor the ViT reads, resized as
its encoder expects (a centre crop as CLIP, or the whole image squeezed as SigLIP); a video is a
folder of frames in file-name order, (T, 3, S, S), each frame going through the same ViT. A file
that cannot be decoded is a DataError that names it.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from support.data_checks import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I"):
        # 16-bit grey (PNG 16-bit opens as I or I;16): scale to 8 bits, plain conversion clips to
        # white.
        grey = np.asarray(image).astype(np.float64) / 257
        image = Image.fromarray(grey.clip(0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels keep arbitrary colours (often black); composite them on white.
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def load_image(
    path: str | Path,
    image_size: int,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    resize: str = "crop",
) -> torch.Tensor:
    """Any PIL mode -> RGB, resized to image_size x image_size, normalized: (3, S, S).
    resize="crop": short side to image_size (the long side truncated, as torchvision and
    transformers compute it),
    centre crop (CLIP); "square": the whole image squeezed to the square (SigLIP). Bicubic both."""
    try:
        with Image.open(path) as image:
            image.load()
            image = to_rgb(image)
    except (
        OSError,
        SyntaxError,
        ValueError,
        NotImplementedError,
        Image.DecompressionBombError,
    ) as error:  # missing/truncated/corrupt/huge, or a variant of a format PIL cannot decode
        raise DataError(
            f"{path}: cannot read image ({error}); expected a complete image file"
        ) from error
    width, height = image.size
    if resize == "square":
        size = (image_size, image_size)
    else:
        short, long = sorted((width, height))
        size = (image_size, int(image_size * long / short))[:: 1 if width <= height else -1]
    if size != image.size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (image.width - image_size) // 2, (image.height - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
    # (3, S, S)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    return (pixels - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def load_pixels(
    path: Path,
    image_size: int,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    resize: str = "crop",
    max_frames: int | None = None,
) -> torch.Tensor:
    """An image file -> (3, S, S); a folder of frames -> (T, 3, S, S), frames in file-name order,
    T <= max_frames: a longer video gives max_frames frames spread evenly over it (first and last
    kept). The keyword arguments are a ViTConfig's pixel_options()."""
    if Path(path).is_dir():
        frames = frame_files(Path(path))
        if max_frames is not None and len(frames) > max_frames:
            frames = [
                frames[i] for i in np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
            ]
        return torch.stack([load_image(frame, image_size, mean, std, resize) for frame in frames])
    return load_image(path, image_size, mean, std, resize)
