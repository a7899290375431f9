"""Attention maps: where the learned latents of Figure 2's cross-attention look in the image.

For a trained cross-attention module (stage 1's attentional pooler, the VAdapter's 1-layer front,
the perceiver baseline's first and last layers), each latent's attention over the patch grid (over
every frame of a video), averaged over the heads, is drawn as heat over the image the ViT read:
grey where the latent barely looks, red to yellow up to the largest weight any latent of the layer
gives a patch of the item. The weights are those of the forward pass that produced the caption:
the layers record them while it runs (`recorded_attention`,
resampler.LatentCrossAttention.record_attention).
"""

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw, ImageOps

from evaluation.pictures import (
    GAP,
    LINE_HEIGHT,
    MARGIN,
    SCALE,
    TEXT,
    WIDTH,
    draw_lines,
    font,
    strip,
    upscaled,
    wrapped,
)
from resampler import LatentCrossAttention, PerceiverResampler

HEAT = {"black": "#200000", "mid": "#e01000", "white": "#ffff60"}  # ImageOps.colorize's ramp
HEAT_OPACITY = 0.85  # at a latent's largest weight; the grey image shows through the rest


@dataclass
class AttentionPanel:
    """One cross-attention layer of one run reading one test item."""

    title: str
    caption: str  # what the run said about the item, decoded from the same forward
    frames: list[Image.Image]  # the T frames (an image: one) as the ViT read them, S x S pixels
    grid: int  # patches per side of a frame
    # (H, L, keys): the keys are the T * N patches, then the L latents when they are keys too
    weights: torch.Tensor


# ---------------------------------------------------------------------------------------------
# Which layers, and recording their weights
# ---------------------------------------------------------------------------------------------


def cross_attention_layers(model) -> dict[str, LatentCrossAttention]:
    """The trained cross-attention worth drawing, by name: the resampler's first layer, and its last
    too when it has several (the perceiver baseline); none for the MLP adapter."""
    resampler = next(
        (m for m in model.adapter.modules() if isinstance(m, PerceiverResampler)), None
    )
    if resampler is None:
        return {}
    layers = resampler.layers
    drawn = [0] if len(layers) == 1 else [0, len(layers) - 1]
    return {f"layer {i + 1} of {len(layers)}": layers[i].attention for i in drawn}


@contextmanager
def recorded_attention(model):
    """Inside, every layer of `cross_attention_layers` keeps the weights of its latest forward in
    `last_attention` (B, H, L, keys); yields those layers by name."""
    layers = cross_attention_layers(model)
    for layer in layers.values():
        layer.record_attention, layer.last_attention = True, None
    try:
        yield layers
    finally:
        for layer in layers.values():
            layer.record_attention = False


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------


def heat_overlay(frame: Image.Image, heat: torch.Tensor, scale: int) -> Image.Image:
    """`frame` in grey with heat (G, G) in [0, 1] over its G x G patch grid, upscaled."""
    grid = heat.shape[-1]
    level = Image.frombytes(
        "L", (grid, grid), bytes((heat * 255).round().byte().flatten().tolist())
    )
    level = level.resize((frame.width * scale, frame.height * scale), Image.Resampling.NEAREST)
    grey = upscaled(ImageOps.grayscale(frame), scale).point(lambda v: 40 + v * 3 // 5)
    colour = ImageOps.colorize(level, **HEAT)
    opacity = level.point(lambda v: round(v * HEAT_OPACITY))
    return Image.composite(colour, grey.convert("RGB"), opacity)


def latent_tiles(panel: AttentionPanel) -> list[tuple[Image.Image, str]]:
    """(picture, label) per tile: the item as the ViT read it, then one heat strip per latent, its
    weights over the patches of every frame divided by the panel's largest weight, so that the
    latents compare: a latent that spreads its weight stays dark."""
    frames, weights = panel.frames, panel.weights.float().mean(0)  # (L, keys)
    scale = SCALE if len(frames) == 1 else 1  # a video's strip of frames is wide already
    patches = len(frames) * panel.grid**2
    # (L, T, G, G)
    per_latent = weights[:, :patches].reshape(-1, len(frames), panel.grid, panel.grid)
    tiles = [(strip([upscaled(frame, scale) for frame in frames]), "as read")]
    for index, latent in enumerate(per_latent):
        heat = latent / per_latent.max()
        picture = strip([heat_overlay(frame, h, scale) for frame, h in zip(frames, heat)])
        tiles.append((picture, f"#{index + 1}  max {latent.max():.2f}"))
    return tiles


def panel_lines(panel: AttentionPanel) -> list[list[tuple]]:
    """The title, the heads, how much attention the patches get, and the caption."""
    heads, latents, keys = panel.weights.shape
    patches = len(panel.frames) * panel.grid**2
    on_patches = panel.weights[..., :patches].float().sum(-1).mean().item()
    where = (
        f"; {on_patches:.0%} of it on the patches, the rest on the latents"
        if keys > patches
        else ""
    )
    about = (
        f"{latents} latents, mean of {heads} heads{where}; a weight spread evenly over the "
        f"patches would be {1 / patches:.3f}"
    )
    return [
        [(panel.title, TEXT)],
        [(about, "#555555")],
        *wrapped(f'caption: "{panel.caption}"', TEXT, WIDTH - 2 * MARGIN),
    ]


def panel_layout(panel: AttentionPanel) -> tuple[list, list, int, int, int]:
    """(lines, tiles, tile width, columns, height): the tiles in rows of `columns`, a label under
    each."""
    lines, tiles = panel_lines(panel), latent_tiles(panel)
    tile_width = max(max(font().getlength(label) for _, label in tiles), tiles[0][0].width)
    tile_width, tile_height = round(tile_width) + 3 * GAP, tiles[0][0].height
    columns = max(1, (WIDTH - 2 * MARGIN + 3 * GAP) // tile_width)  # the last needs no gap
    rows = -(-len(tiles) // columns)
    height = len(lines) * LINE_HEIGHT + rows * (tile_height + LINE_HEIGHT + GAP) + 2 * MARGIN
    return lines, tiles, tile_width, columns, height


def draw_attention_maps(panels: list[AttentionPanel], path) -> tuple[int, int]:
    """Every panel one under the other, a rule between them, into the PNG `path` -> its size."""
    layouts = [panel_layout(panel) for panel in panels]
    width = max([WIDTH] + [2 * MARGIN + layout[2] * layout[3] - 3 * GAP for layout in layouts])
    image = Image.new("RGB", (width, sum(layout[4] for layout in layouts) + MARGIN), "white")
    draw, top = ImageDraw.Draw(image), MARGIN
    for lines, tiles, tile_width, columns, height in layouts:
        y = draw_lines(draw, MARGIN, top, lines)
        for index, (picture, label) in enumerate(tiles):
            row, column = divmod(index, columns)
            x = MARGIN + column * tile_width
            tile_top = y + row * (picture.height + LINE_HEIGHT + GAP)
            image.paste(picture, (x, tile_top))
            draw_lines(draw, x, tile_top + picture.height, [[(label, TEXT)]])
        top += height
        draw.line([(MARGIN, top - MARGIN // 2), (width - MARGIN, top - MARGIN // 2)], "#bbbbbb")
    image.save(path)
    return image.size
