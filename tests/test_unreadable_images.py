"""Image files that the readers list but that cannot be decoded (cut short, decompression bombs):
the dataset raises an error naming file, field and image id, or in skip mode replaces the sample by
the next one and counts every such image, from one process or from loader workers."""

import functools
import struct
import warnings
import zlib
from pathlib import Path

import pytest
import torch
from coco_files import official_coco

import data
from support import readers


def test_truncated_image_raises_in_dataset_or_is_replaced_by_the_next_sample(tmp_path, tokenizer):
    path = official_coco(tmp_path)
    read = readers.read_captions(path, image_root=tmp_path / "train2014")
    broken = read.images[25]
    broken.write_bytes(broken.read_bytes()[:200])
    strict = data.VisionTextDataset(read.examples, tokenizer, 32)
    with pytest.raises(readers.DataError) as error:
        strict[1]
    assert (
        str(broken) in str(error.value)
        and "'file_name'" in str(error.value)
        and "25" in str(error.value)
    )
    lenient = data.VisionTextDataset(read.examples, tokenizer, 32, on_bad_sample="skip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = [lenient[i]["image_id"] for i in range(len(lenient))]
    assert ids == [9, 30, 30, 9, 30, 30] and len(caught) == 1 and lenient.unreadable == {broken}


def write_png_header(path: Path, width: int, height: int) -> None:
    """A decompression bomb as PIL meets one: a small PNG whose header declares width x height
    pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_a_data_error_naming_file_and_field(tmp_path, tokenizer):
    path = official_coco(tmp_path)
    read = readers.read_captions(path, image_root=tmp_path / "train2014")
    # 400M pixels: over twice PIL's MAX_IMAGE_PIXELS
    write_png_header(read.images[25], 20_000, 20_000)
    with pytest.raises(readers.DataError) as error:
        data.VisionTextDataset(read.examples, tokenizer, 32)[1]
    for text in (
        str(read.images[25]),
        "'file_name'",
        "image_id 25",
        "decompression bomb",
        f"{path}: annotations[1]",
    ):
        assert text in str(error.value), str(error.value)
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        sample = data.VisionTextDataset(read.examples, tokenizer, 32, on_bad_sample="skip")[1]
    assert sample["image_id"] == 30 and sample["unreadable"] == [str(read.images[25])]


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_mode_counts_every_unreadable_image_from_any_worker(tmp_path, tokenizer, workers):
    path = official_coco(tmp_path)  # images 9, 25, 30, two captions each
    read = readers.read_captions(path, image_root=tmp_path / "train2014")
    truncated, bomb = read.images[9], read.images[30]
    truncated.write_bytes(truncated.read_bytes()[:200])
    write_png_header(bomb, 20_000, 20_000)
    dataset = data.VisionTextDataset(read.examples, tokenizer, 32, on_bad_sample="skip")
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=2,
        num_workers=workers,
        collate_fn=functools.partial(data.collate, pad_id=tokenizer.pad_id),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(loader)
    assert all(image_id == 25 for batch in batches for image_id in batch["image_ids"])
    listed = [path for batch in batches for path in batch.get("unreadable", [])]
    assert sorted(set(listed)) == sorted([str(truncated), str(bomb)])
    if workers == 0:  # one process: each image is listed and named once
        assert len(listed) == 2 and dataset.unreadable == {truncated, bomb}
        assert sorted(str(w.message).split(": ")[1] for w in caught) == sorted(
            [str(truncated), str(bomb)]
        )
