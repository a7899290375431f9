"""Property tests of the files the readers decode, on generated damage: an image or frame of any
format PIL reads, whole, cut, changed or random, and the tokenizer file, whole, cut, random, empty,
missing or a folder. Each loads as written or raises DataError naming the file, never another
exception. The store and the Hypothesis settings: reader_store.py."""

from pathlib import Path

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from reader_store import FORMATS, encoded

import data
from support.data_checks import DataError
from support.models import load_tokenizer

# skip mode's report of what it skipped; PIL's, on what it could read of a damaged file
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@given(
    format=st.sampled_from(FORMATS),
    damage=st.sampled_from(["whole", "cut", "changed", "random"]),
    at=st.integers(min_value=0),
    value=st.integers(1, 255),
    noise=st.binary(max_size=40),
)
@example(format="DDS", damage="changed", at=80, value=64, noise=b"")  # "pixel format flags 0"
def test_image_or_frame_decodes_or_is_a_data_error(store, format, damage, at, value, noise):
    whole_file, colour = encoded(format), (torch.tensor([200, 30, 30]) / 255 - 0.5) / 0.5
    at %= len(whole_file)
    changed = whole_file[:at] + bytes([whole_file[at] ^ value]) + whole_file[at + 1 :]
    content = {"whole": whole_file, "cut": whole_file[:at], "changed": changed, "random": noise}
    frame = store / "clip" / "0.png"  # whatever the format: PIL reads the content
    frame.parent.mkdir(exist_ok=True)
    frame.write_bytes(content[damage])
    for path, shape in ((frame, (3, 8, 8)), (frame.parent, (1, 3, 8, 8))):
        try:
            pixels = data.load_pixels(path, 8)
        except DataError as error:
            assert damage != "whole" and str(frame) in str(error), str(error)
            continue
        assert pixels.shape == shape and pixels.abs().max() <= 1 + 1e-6
        if damage == "whole":  # lossy formats stay within a few levels of 255
            assert torch.allclose(pixels.reshape(3, -1).T, colour, atol=0.05)


LINES, LM_VOCAB = ["a red circle", "a blue cat", "a red cat", "a blue circle"], 17


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer") / "small.model"
    assert data.Tokenizer.train(LINES * 10, path, vocab_size=LM_VOCAB).vocab_size == LM_VOCAB
    return path


@given(
    damage=st.sampled_from(["whole", "cut", "random", "empty", "missing", "folder"]),
    at=st.integers(min_value=0),
    noise=st.binary(min_size=1, max_size=40),
)
@example(damage="cut", at=113, noise=b"x")  # between two pieces: it parses, with fewer pieces
def test_tokenizer_file_loads_whole_or_is_a_data_error(store, tokenizer_file, damage, at, noise):
    whole_file, path = tokenizer_file.read_bytes(), store / "tokenizer.model"
    content = {"whole": whole_file, "cut": whole_file[: at % len(whole_file)], "random": noise}
    path.unlink(missing_ok=True)
    if damage in content or damage == "empty":
        path.write_bytes(content.get(damage, b""))
    path = store / "videos" if damage == "folder" else path
    try:  # as the scripts load it: checked against the language model's vocab_size too
        tokenizer = load_tokenizer(path, LM_VOCAB)
    except DataError as error:
        assert damage != "whole" and str(path) in str(error), str(error)
    else:  # as trained: special ids as Tokenizer.train fixes them, lines read back as written
        special = tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id
        assert damage == "whole" and special == (0, 1, 2, 3)
        assert [tokenizer.decode(tokenizer.encode(line)) for line in LINES] == LINES
