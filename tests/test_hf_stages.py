"""The stage scripts taking `hf:FOLDER` for the ViT, the LMs and their tokenizers: each stage's data
is tokenized by the LM that decodes it, and a tokenizer of another vocabulary is refused with the
fix named. The folders are written here from our own models (hf_folders.py)."""

import re

import pytest
from hf_folders import llama_folder, siglip_folder, train_tokenizer

import data
import train_stage1
import train_stage2
from stage0 import synthetic
from support.checkpoints import load_checkpoint
from support.model_spec import build_vlm

pytestmark = pytest.mark.usefixtures("no_network")


def test_stages_take_hugging_face_folders_with_each_stage_on_its_lms_tokenizer(tmp_path):
    """Stage 1 decodes text with the tiny LM (a Llama folder), so its data uses the tiny LM's
    tokenizer; stage 2 decodes with the large LM (another Llama folder, another vocabulary), so its
    data uses the large LM's tokenizer. The tiny LM reads no token ids in stage 2."""
    world = tmp_path / "data"
    synthetic.generate(
        world,
        synthetic.WorldConfig(
            train_images=16,
            val_images=8,
            test_images=4,
            train_videos=0,
            val_videos=0,
            test_videos=0,
            image_size=32,
        ),
    )
    texts = data.training_texts(world)
    tiny, large = tmp_path / "tiny", tmp_path / "large"
    for folder, vocab_size in ((tiny, 60), (large, 90)):
        folder.mkdir()
        train_tokenizer(
            folder / "tokenizer.model", texts, vocab_size, pad_id=0, unk_id=1, bos_id=2, eos_id=3
        )
    tiny_vocab, large_vocab = (
        data.Tokenizer(f"hf:{folder}").vocab_size for folder in (tiny, large)
    )
    assert tiny_vocab != large_vocab
    llama_folder(tiny, vocab_size=tiny_vocab)  # untied head: VAdapter must freeze it in stage 2
    llama_folder(large, vocab_size=large_vocab, hidden_size=48, tie_word_embeddings=True)
    siglip_folder(tmp_path / "siglip")
    fast = [
        "--data",
        str(world),
        "--tasks",
        "caption",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--eval-every",
        "2",
        "--eval-batches",
        "1",
        "--log-every",
        "1",
        "--resampler-num-latents",
        "4",
    ]
    vit = ["--vit", f"hf:{tmp_path / 'siglip'}"]
    train_stage1.main(
        [
            *fast,
            *vit,
            "--tiny-lm",
            f"hf:{tiny}",
            "--tokenizer",
            f"hf:{tiny}",
            "--out-dir",
            str(tmp_path / "stage1"),
        ]
    )
    # rebuilt from the file alone below
    train_stage2.main(
        [
            *fast,
            *vit,
            "--lm",
            f"hf:{large}",
            "--tokenizer",
            f"hf:{large}",
            "--adapter",
            "vadapter",
            "--stage1",
            str(tmp_path / "stage1"),
            "--out-dir",
            str(tmp_path / "stage2"),
            "--self-contained",
            "true",
        ]
    )
    checkpoint = load_checkpoint(str(tmp_path / "stage2"), expected_stage="stage2")
    assert (
        checkpoint["spec"].lm.vocab_size == large_vocab
        and checkpoint["spec"].tiny_lm.vocab_size == tiny_vocab
    )
    model = build_vlm(checkpoint["spec"])  # rebuilt from the file alone
    model.load_state_dict(checkpoint["model"])
    trained = {name for name, _ in model.trainable_parameters()}
    assert trained and all(name.startswith("adapter.") for name in trained)
    assert "adapter.tiny_lm.output_head.weight" not in trained
    # the tiny LM's tokenizer with the large LM: refused
    with pytest.raises(ValueError, match="vocab_size"):
        train_stage2.main(
            [
                *fast,
                *vit,
                "--lm",
                f"hf:{large}",
                "--tokenizer",
                f"hf:{tiny}",
                "--adapter",
                "vadapter",
                "--stage1",
                str(tmp_path / "stage1"),
                "--out-dir",
                str(tmp_path / "mismatch"),
            ]
        )
    # the data's own
    train_tokenizer(world / data.TOKENIZER_FILE, texts, 40, pad_id=0, unk_id=1, bos_id=2, eos_id=3)
    assert data.Tokenizer(world / data.TOKENIZER_FILE).vocab_size != large_vocab
    # no --tokenizer: the fix is named
    with pytest.raises(ValueError, match=re.escape(f"give --tokenizer hf:{large} ")):
        train_stage2.main(
            [
                *fast,
                *vit,
                "--lm",
                f"hf:{large}",
                "--adapter",
                "vadapter",
                "--stage1",
                str(tmp_path / "stage1"),
                "--out-dir",
                str(tmp_path / "no_tokenizer"),
            ]
        )
