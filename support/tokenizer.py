"""Tokens: the sentencepiece tokenizer of the text in Figure 2's input box (PaLM2-VAdapter, arXiv
2402.10896; PaLM2 reads sentencepiece tokens).

One tokenizer serves every LM of a run: trained here on a data folder's texts (Tokenizer.train,
fixed special ids), or read from a Hugging Face model folder (`hf:FOLDER`). The rest of the project
reads it as data.Tokenizer, next to the prompt that uses it (data.py).
"""

import io
from pathlib import Path

import sentencepiece

from support.data_checks import DataError
from support.writers import write_atomically


class Tokenizer:
    """Sentencepiece. Models trained here fix pad=0, unk=1, bos=2, eos=3 inside the model file; a
    given .model keeps its own ids, but must define pad, bos and eos.

    model_path: a .model file, or `hf:FOLDER` for the tokenizer.model of a local Hugging Face model
    folder (as `--lm hf:FOLDER`). Such a file may have no pad piece (Llama's has none; transformers
    users pad with eos): it then pads with eos, which is safe because padding is never a target and
    never attended to."""

    def __init__(self, model_path: str | Path):
        hugging_face = str(model_path).startswith("hf:")
        if hugging_face:
            folder = Path(str(model_path)[len("hf:") :])
            model_path = folder / "tokenizer.model"
            if not model_path.is_file():
                raise FileNotFoundError(
                    f"{folder} has no tokenizer.model (a sentencepiece file); data.Tokenizer reads "
                    "only sentencepiece (a tokenizer.json-only model such as Llama 3 is not "
                    "supported)"
                )
        try:
            self.model = sentencepiece.SentencePieceProcessor(model_file=str(model_path))
        except (OSError, RuntimeError) as error:  # missing, a folder, not a sentencepiece model
            raise DataError(
                f"{model_path}: cannot load the tokenizer ({error}); expected a sentencepiece "
                ".model file, as Tokenizer.train writes"
            ) from None
        self.pad_id, self.unk_id = self.model.pad_id(), self.model.unk_id()
        self.bos_id, self.eos_id = self.model.bos_id(), self.model.eos_id()
        if hugging_face and self.pad_id < 0:
            self.pad_id = self.eos_id
        if min(self.pad_id, self.bos_id, self.eos_id) < 0:
            raise DataError(
                f"{model_path}: pad_id, bos_id, eos_id are {self.pad_id}, {self.bos_id}, "
                f"{self.eos_id}; "
                "expected all three defined (>= 0), as in models made by Tokenizer.train"
            )

    @classmethod
    def train(cls, texts, model_path: str | Path, vocab_size: int) -> "Tokenizer":
        """Trains on `texts` (an iterable of strings); the same texts give the same model file."""
        model = io.BytesIO()
        # one thread: the same input always gives the same model
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=model,
            vocab_size=vocab_size,
            model_type="unigram",
            hard_vocab_limit=False,  # a small repetitive corpus may support fewer pieces than asked
            character_coverage=1.0,
            pad_id=0,
            unk_id=1,
            bos_id=2,
            eos_id=3,
            num_threads=1,
            minloglevel=2,
        )
        write_atomically(model_path, lambda temporary: temporary.write_bytes(model.getvalue()))
        return cls(model_path)

    @property
    def vocab_size(self) -> int:
        return self.model.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.model.encode(text)

    def decode(self, ids) -> str:
        return self.model.decode(
            [int(i) for i in ids if int(i) not in (self.pad_id, self.bos_id, self.eos_id)]
        )
