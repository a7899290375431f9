"""Pictures of Figure 2's input box and of what the model says, drawn with Pillow (no plotting
dependency): the pixels the frozen ViT read turned back into an image (a video: its frames),
upscaled so that a 64-pixel toy image reads at 100% zoom, and lines of text, wrapped and coloured,
in a font at least 11 pixels high. evaluation/show.py and evaluation/attention_maps.py draw with
these.
"""

import torch
from PIL import Image, ImageDraw, ImageFont

FONT_SIZE = 15  # pixels
LINE_HEIGHT = 20  # pixels from one line of text to the next
SCALE = 2  # nearest-neighbour upscaling of the pictures
MARGIN = 12  # around a sheet and between its blocks
GAP = 4  # between frames of a strip, and between a picture and its text
WIDTH = 1120  # of a sheet, unless a picture needs more
TEXT = "#111111"


def font(size: int = FONT_SIZE) -> ImageFont.ImageFont:
    """Pillow's own font at `size` pixels (Pillow >= 10.1); DejaVu Sans for an older Pillow, whose
    load_default has only a 10-pixel bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.truetype("DejaVuSans.ttf", size)


def frames_of(pixels: torch.Tensor, vision_config) -> list[Image.Image]:
    """The normalised pixels a ViT read, (3, S, S) or (T, 3, S, S), back as T RGB images."""
    mean = torch.tensor(vision_config.image_mean).view(3, 1, 1)
    std = torch.tensor(vision_config.image_std).view(3, 1, 1)
    frames = pixels if pixels.dim() == 4 else pixels[None]  # (T, 3, S, S)
    return [
        Image.fromarray(
            ((frame * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        )
        for frame in frames
    ]


def upscaled(image: Image.Image, scale: int = SCALE) -> Image.Image:
    """Every pixel a scale x scale square (nearest neighbour: the patch grid stays sharp)."""
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def strip(frames: list[Image.Image]) -> Image.Image:
    """Frames side by side, GAP pixels of white between them: a video read left to right."""
    width = sum(frame.width for frame in frames) + GAP * (len(frames) - 1)
    out = Image.new("RGB", (width, max(frame.height for frame in frames)), "white")
    x = 0
    for frame in frames:
        out.paste(frame, (x, 0))
        x += frame.width + GAP
    return out


# A line of text is a list of (text, colour) segments, drawn one after the other.


def wrapped(text: str, colour: str, width: int, indent: str = "    ") -> list[list[tuple]]:
    """One-segment lines of at most `width` pixels, broken between words; the lines after the
    first start with `indent`."""
    lines, words, measure = [], text.split(" "), font().getlength
    line = words[0]
    for word in words[1:]:
        if measure(f"{line} {word}") <= width:
            line = f"{line} {word}"
        else:
            lines.append(line)
            line = indent + word
    return [[(line, colour)] for line in [*lines, line]]


def draw_lines(draw: ImageDraw.ImageDraw, x: int, y: int, lines: list[list[tuple]]) -> int:
    """Draw lines of (text, colour) segments from (x, y); returns the y below the last one."""
    writing = font()
    for line in lines:
        left = x
        for text, colour in line:
            draw.text((left, y), text, fill=colour, font=writing)
            left += writing.getlength(text)
        y += LINE_HEIGHT
    return y
