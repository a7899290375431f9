"""The store of the reader property tests (test_reader_properties.py,
test_reader_file_properties.py): what the data folder holds, the names a generated file may give,
the image formats, and the Hypothesis settings: HYPOTHESIS_PROFILE=ci (default, derandomized) or
deep (random, to hunt bugs)."""

import io
import os

from hypothesis import settings
from PIL import Image

settings.register_profile("ci", max_examples=200, deadline=None, derandomize=True, database=None)
settings.register_profile("deep", settings.get_profile("ci"), max_examples=3000, derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

IMAGE, OUTSIDE = "image", "outside"
# What the store (the data folder of these tests) holds: an image file, or a folder of n frames.
FILES = {
    **dict.fromkeys(["images/red.png", "images/ünï.png", "COCO_val2014_000000000000.jpg"], IMAGE),
    "images/fake.png": IMAGE,  # text inside: readers check presence, decoding comes at loading
    **{"videos/three": 3, "videos/one": 1, "videos/none": 0, "videos/notes_only": 0},
    "videos/three_and_notes": 3,  # and notes.txt, which is not a frame
}
NAMES = [
    *FILES,
    *("images/absent.png", "red.png", "three", " images/red.png\n", "images/../images/red.png"),
    *("a" * 300, "images/\x00.png", "images/\ud800.png", "", " \t"),  # too long, NUL, surrogate
    *("/etc/passwd", "../outside.png", "images/../../outside.png"),
]
FORMATS = ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "ICO", "TGA", "PPM", "PCX", "SGI", "DDS"]


def encoded(format="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 4), (200, 30, 30)).save(buffer, format)
    return buffer.getvalue()
