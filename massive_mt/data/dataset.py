"""One translation direction of a data-bin split as M2M100 training examples and batches."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from massive_mt.data.binarize import load_data_bin
from massive_mt.data.corpus import MANIFEST_NAME
from massive_mt.data.indexed import IndexedTokens
from massive_mt.data.spm import EOS_ID, PAD_ID
from massive_mt.data.tasks import task_name
from massive_mt.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class TaskDataset:
    """One translation direction ``src_lang -> tgt_lang`` of a data-bin split, in M2M100 format.

    The pair ``en-fr`` serves both en->fr and fr->en. Each example becomes
    ``input_ids = [src_tag] + src + [eos]`` and ``labels = [tgt_tag] + tgt + [eos]``, each at
    most ``max_len`` long: longer sentences lose their final tokens (the eos stays), and
    ``n_truncated`` counts the examples affected.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        src_lang: str,
        tgt_lang: str,
        split: str = "train",
        *,
        max_len: int,
    ):
        self.data_dir = Path(data_dir)
        manifest = load_data_bin(self.data_dir)
        mpath = self.data_dir / MANIFEST_NAME
        self.src_lang, self.tgt_lang, self.split = src_lang, tgt_lang, split
        self.task = task_name((src_lang, tgt_lang))
        pair = next((p for p in (self.task, f"{tgt_lang}-{src_lang}") if p in manifest["pairs"]), None)
        if pair is None or src_lang == tgt_lang:
            raise DataError(f"{mpath}: no pair serves the direction {src_lang}->{tgt_lang}")
        for lang in (src_lang, tgt_lang):
            if lang not in manifest["lang_ids"]:
                raise DataError(f"{mpath}: no language id for {lang!r}")
        if not isinstance(max_len, int) or max_len < 3:
            raise ConfigError(f"max_len must be an integer >= 3 (tag + token + eos), got {max_len!r}")
        self.max_len = max_len
        special = manifest.get("special_ids") or {}          # the tokenizer's (the project's: 1, 2)
        self.pad_id, self.eos_id = int(special.get("pad", PAD_ID)), int(special.get("eos", EOS_ID))
        self.src_tag = int(manifest["lang_ids"][src_lang])
        self.tgt_tag = int(manifest["lang_ids"][tgt_lang])

        name = f"{split}.{pair}"
        if f"{name}.{src_lang}" not in manifest["files"]:
            raise DataError(f"{mpath}: split {split!r} of pair {pair} was not encoded")
        self.src = IndexedTokens(self.data_dir / f"{name}.{src_lang}", manifest["dtype"], manifest["vocab_size"])
        self.tgt = IndexedTokens(self.data_dir / f"{name}.{tgt_lang}", manifest["dtype"], manifest["vocab_size"])
        if len(self.src) != len(self.tgt):
            raise DataError(
                f"{self.src.idx_path} has {len(self.src)} sentences but {self.tgt.idx_path} has {len(self.tgt)}"
            )

        # Lengths with tag + eos, before and after truncation.
        full_src, full_tgt = self.src.sizes + 2, self.tgt.sizes + 2
        self.sizes_src = np.minimum(full_src, max_len)
        self.sizes_tgt = np.minimum(full_tgt, max_len)
        self.n_truncated_src = int(np.count_nonzero(full_src > max_len))
        self.n_truncated_tgt = int(np.count_nonzero(full_tgt > max_len))
        self.n_truncated = int(np.count_nonzero((full_src > max_len) | (full_tgt > max_len)))
        if self.n_truncated:
            log.warning(
                "%s %s: %d of %d examples truncated to max_len=%d", self.task, split, self.n_truncated, len(self), max_len
            )

    def __len__(self) -> int:
        return len(self.src)

    def _block(self, data: IndexedTokens, tag: int, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded rows ``[tag] + tokens[:max_len - 2] + [eos]`` and their lengths."""
        body = np.minimum(data.sizes[indices], self.max_len - 2)
        cols = np.arange(int(body.max()))
        inside = cols[None, :] < body[:, None]
        rows = np.full((indices.size, cols.size + 2), self.pad_id, dtype=np.int64)
        rows[:, 0] = tag
        # One vectorised gather from the memory map instead of a slice per sentence.
        rows[:, 1:-1][inside] = data.tokens[(data.offsets[indices][:, None] + cols[None, :])[inside]]
        rows[np.arange(indices.size), body + 1] = self.eos_id
        return rows, body + 2

    def collate(self, indices: Sequence[int]) -> dict:
        """Right-padded M2M100 batch: input_ids, attention_mask, labels, decoder_input_ids (LongTensors).

        Labels are padded with ``pad_id`` (not -100): the trainer masks pad positions.
        ``decoder_input_ids = [eos] + labels[:-1]``. Also ``n_tokens`` (non-pad label tokens)
        and ``n_sentences`` as Python ints.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size == 0:
            raise ValueError("collate: empty batch")
        if indices.min() < 0 or indices.max() >= len(self):
            raise IndexError(f"collate: indices out of range for {self.task} {self.split} ({len(self)} examples)")
        input_ids, src_len = self._block(self.src, self.src_tag, indices)
        labels, tgt_len = self._block(self.tgt, self.tgt_tag, indices)
        attention_mask = (np.arange(input_ids.shape[1])[None, :] < src_len[:, None]).astype(np.int64)
        decoder_input_ids = np.empty_like(labels)
        decoder_input_ids[:, 0] = self.eos_id
        decoder_input_ids[:, 1:] = labels[:, :-1]
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "labels": torch.from_numpy(labels),
            "decoder_input_ids": torch.from_numpy(decoder_input_ids),
            "n_tokens": int(tgt_len.sum()),
            "n_sentences": int(indices.size),
        }
