"""The tokenizer interface every stage codes against (prepare, training, evaluation, export): text <->
ids, a language's tag id, the special ids, the vocabulary size, the files and their identity. Its
implementations: massive_mt/data/spm.py (the project's SentencePiece model) and
massive_mt/data/tokenizers.py (a pretrained checkpoint's Hugging Face tokenizer, and the factory
`load_tokenizer` that picks between the two)."""
from __future__ import annotations

import hashlib
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path

SPM_FILE = "spm.model"


def files_identity(paths: Iterable[Path]) -> str:
    """sha256 over the contents of ``paths`` in the order of their names."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda p: p.name):
        with open(p, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


class BaseTokenizer(ABC):
    """Text <-> ids, the id of a corpus language's tag, the special ids and the vocabulary size."""

    kind: str                       # "spm" or "hf"
    family: str | None              # None (the project's own), "nllb" or "m2m100"
    bos_id: int
    pad_id: int
    eos_id: int
    unk_id: int
    vocab_size: int                 # max id + 1: the rows an embedding matrix needs

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without bos/eos or language tag."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, dropping special tokens and language tags."""

    @abstractmethod
    def lang_id(self, lang: str) -> int:
        """Id of the tag of corpus language ``lang``; DataError if the tokenizer has none."""

    @abstractmethod
    def files(self) -> list[Path]:
        """The files that make up the tokenizer."""

    def identity(self) -> str:
        """sha256 of the tokenizer's files."""
        return files_identity(self.files())

    def save(self, directory: str | os.PathLike) -> list[Path]:
        """Copy the tokenizer's files into ``directory`` (byte for byte); return the copies."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        out = []
        for f in self.files():
            tmp = directory / f"{f.name}.tmp"
            shutil.copyfile(f, tmp)
            os.replace(tmp, directory / f.name)
            out.append(directory / f.name)
        return out

    def special_ids(self) -> dict[str, int]:
        return {"bos": self.bos_id, "pad": self.pad_id, "eos": self.eos_id, "unk": self.unk_id}
