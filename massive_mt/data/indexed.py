"""Memory-mapped token sequences of a data-bin: a flat ``.bin`` token file and its ``.idx.npy`` offsets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from massive_mt.errors import DataError


class IndexedTokens:
    """Memory-mapped token sequences: ``{prefix}.bin`` (flat ids) + ``{prefix}.idx.npy`` (offsets).

    With ``vocab_size``, every id is checked to be below it (one pass over the map), so that a
    corrupt or foreign ``.bin`` is refused at load, naming the file and sentence, instead of
    failing later inside the embedding lookup.
    """

    def __init__(self, prefix: str | os.PathLike, dtype: str | np.dtype = "uint16", vocab_size: int | None = None):
        self.bin_path = Path(f"{prefix}.bin")
        self.idx_path = Path(f"{prefix}.idx.npy")
        self.dtype = np.dtype(dtype)
        try:
            offsets = np.load(self.idx_path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise DataError(f"{self.idx_path}: not found") from None
        except (OSError, ValueError, EOFError) as e:
            raise DataError(f"{self.idx_path}: not a valid offsets file: {e}") from None
        if offsets.dtype != np.int64 or offsets.ndim != 1 or offsets.size == 0 or offsets[0] != 0:
            raise DataError(f"{self.idx_path}: expected a 1-D int64 array starting at 0")
        self.sizes = np.diff(offsets)
        if np.any(self.sizes < 0):
            raise DataError(f"{self.idx_path}: offsets are not non-decreasing")
        if not self.bin_path.is_file():
            raise DataError(f"{self.bin_path}: not found")
        n_tokens = int(offsets[-1])
        nbytes = self.bin_path.stat().st_size
        if nbytes != n_tokens * self.dtype.itemsize:
            raise DataError(
                f"{self.bin_path}: {nbytes} bytes, but {self.idx_path} indexes {n_tokens} tokens "
                f"of {self.dtype} ({n_tokens * self.dtype.itemsize} bytes); the files are corrupt or mismatched"
            )
        self.offsets = offsets
        # np.memmap cannot map an empty file.
        self.tokens = np.memmap(self.bin_path, dtype=self.dtype, mode="r") if n_tokens else np.zeros(0, self.dtype)
        if vocab_size is not None and n_tokens:
            self._check_ids(vocab_size)

    def _check_ids(self, vocab_size: int) -> None:
        # int32 files could hold negative ids; uint16 ones cannot
        if int(self.tokens.max()) < vocab_size and int(self.tokens.min()) >= 0:
            return
        pos = int(np.argmax((self.tokens >= vocab_size) | (self.tokens < 0)))
        sentence = int(np.searchsorted(self.offsets, pos, side="right"))  # 1-based
        raise DataError(
            f"{self.bin_path}: token id {int(self.tokens[pos])} in sentence {sentence} is out of range for "
            f"the vocabulary of {vocab_size} ids; the file is corrupt or was encoded with another model"
        )

    def __len__(self) -> int:
        return self.sizes.size

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {self.bin_path} ({n} sentences)")
        i %= n
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]
