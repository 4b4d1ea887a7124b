"""Decoding shared by `evaluate` and `translate`: the model loaded for inference (torch or CTranslate2),
batched beam search with the target-language tag forced (`Translator.generate`), length-sorted
token-bounded batches, the deal of batches to ranks and their gathering on rank 0, and the options
and rank arguments both commands share."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from massive_mt.data.sampler import token_budget_batches
from massive_mt.errors import ConfigError, DataError, MassiveMTError
from massive_mt.io import read_json_object

# weight files of a `save_pretrained` directory, in the order transformers looks for them
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def decode_dtype(dtype: Optional[str], device: torch.device) -> str:
    """The dtype the model decodes in: ``dtype`` (bf16 or fp32), else bf16 on CUDA and fp32 elsewhere."""
    if dtype is None:
        return "bf16" if device.type == "cuda" else "fp32"
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    return dtype


class Translator:
    """Beam search with an M2M100-style model from a trainer output directory, in ``dtype``
    (:func:`decode_dtype`; the test NLL is computed from fp32 log-probabilities either way)."""

    def __init__(self, model_dir: str | Path, device: Optional[str] = None, max_len: Optional[int] = None,
                 dtype: Optional[str] = None):
        from massive_mt.data.tokenizers import load_tokenizer

        model_dir = Path(model_dir)
        for f in ("config.json",):
            if not (model_dir / f).is_file():
                raise DataError(f"{model_dir / f}: missing (not a massive_mt model directory)")
        meta_path = model_dir / "massive_mt.json"
        self.meta = read_json_object(meta_path) if meta_path.is_file() else {}
        self.tokenizer = load_tokenizer(model_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = decode_dtype(dtype, self.device)
        self.model = load_model(model_dir)
        self.model.to(self.device, dtype=DTYPES[self.dtype]).eval()
        self.max_positions = self.model.config.max_position_embeddings
        self.max_len = min(max_len or self.meta.get("max_len", 256), self.max_positions - 2)

    def encode(self, sentences: list[str], src: str) -> list[list[int]]:
        """``[src_tag] + tokens + [eos]`` per sentence, within the model's length."""
        tok = self.tokenizer
        src_tag = tok.lang_id(src)
        return [[src_tag] + tok.encode(s)[: self.max_len - 2] + [tok.eos_id] for s in sentences]

    @torch.inference_mode()
    def generate(self, encoded: list[list[int]], tgt: str, beam: int = 4, max_new_tokens: int = 128,
                 length_penalty: float = 1.0) -> list[str]:
        """One batch of beam search: the rows right-padded, the target tag forced as the first token."""
        tok = self.tokenizer
        width = max(map(len, encoded))
        ids = torch.full((len(encoded), width), tok.pad_id, dtype=torch.long)
        for row, e in enumerate(encoded):
            ids[row, :len(e)] = torch.tensor(e)
        mask = ids.ne(tok.pad_id).long()
        # fairseq-style length limit a*src+b, within the model's position table
        limit = min(max_new_tokens, int(1.5 * width) + 10, self.max_positions - 2)
        gen = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                  num_beams=beam, max_new_tokens=limit, length_penalty=length_penalty,
                                  forced_bos_token_id=tok.lang_id(tgt), decoder_start_token_id=tok.eos_id,
                                  early_stopping=True)
        return [tok.decode(g) for g in gen.tolist()]

    @torch.inference_mode()
    def nll(self, encoded: list[list[int]], tgt: str, refs: list[str]) -> list[tuple[float, int]]:
        """(summed negative log-likelihood in nats, tokens) of each reference given its source, teacher
        forced as in training (``labels = [tgt_tag] + tokens + [eos]``, ``decoder_input_ids = [eos] +
        labels[:-1]``, no label smoothing); the target tag, which decoding forces, is not scored."""
        tok = self.tokenizer
        labels = [[tok.lang_id(tgt)] + tok.encode(r)[: self.max_len - 2] + [tok.eos_id] for r in refs]
        ids = torch.full((len(encoded), max(map(len, encoded))), tok.pad_id, dtype=torch.long)
        lab = torch.full((len(labels), max(map(len, labels))), tok.pad_id, dtype=torch.long)
        for row, (e, y) in enumerate(zip(encoded, labels)):
            ids[row, :len(e)] = torch.tensor(e)
            lab[row, :len(y)] = torch.tensor(y)
        dec = torch.cat([torch.full((len(labels), 1), tok.eos_id, dtype=torch.long), lab[:, :-1]], dim=1)
        logits = self.model(input_ids=ids.to(self.device), attention_mask=ids.ne(tok.pad_id).long().to(self.device),
                            decoder_input_ids=dec.to(self.device)).logits
        lab = lab.to(self.device)
        tok_nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), lab, reduction="none")
        scored = lab.ne(tok.pad_id)
        scored[:, 0] = False                                  # the forced target tag
        tok_nll = tok_nll.masked_fill(~scored, 0.0)
        return [(float(s), int(n)) for s, n in zip(tok_nll.double().sum(1).tolist(), scored.sum(1).tolist())]

    def translate(self, sentences: list[str], src: str, tgt: str, beam: int = 4, batch_size: int = 64,
                  max_tokens: int = 4096, max_new_tokens: int = 128, length_penalty: float = 1.0) -> list[str]:
        """Translate in one process: length-sorted batches of at most ``batch_size`` sentences and
        ``max_tokens`` source tokens (padding included), hypotheses in the input order."""
        encoded = self.encode(sentences, src)
        out: list[Optional[str]] = [None] * len(sentences)
        for idx in length_batches(encoded, max_tokens, batch_size):
            for i, h in zip(idx, self.generate([encoded[i] for i in idx], tgt, beam, max_new_tokens,
                                               length_penalty)):
                out[i] = h
        return out


def load_model(model_dir: Path):
    """The model of a `save_pretrained` directory; DataError naming the directory or weight file when
    the weights are missing, unreadable (e.g. a truncated safetensors file) or not finite."""
    from safetensors import SafetensorError
    from transformers import M2M100ForConditionalGeneration
    from transformers.utils import logging as hf_logging

    weights = next((model_dir / f for f in WEIGHT_FILES if (model_dir / f).is_file()), None)
    if weights is None:
        raise DataError(f"{model_dir}: no model weights ({WEIGHT_FILES[0]}): not a complete model directory")
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()                  # one line per error, no bar of a small load
    try:
        model = M2M100ForConditionalGeneration.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{weights}: cannot load the model weights ({reason}); the file is damaged or truncated") from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    state = model.state_dict()
    bad = [name for name, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise DataError(f"{weights}: the model is non-finite: NaN or inf in {len(bad)} of {len(state)} tensors "
                        f"(first: {bad[0]}); the training diverged, evaluate an earlier checkpoint")
    return model


def length_batches(encoded: list[list[int]], max_tokens: int, batch_size: int) -> list[np.ndarray]:
    """Sentence indices in length-sorted batches of at most ``batch_size`` sentences and ``max_tokens``
    padded source tokens: a function of the lengths alone, so every world size cuts the same batches."""
    if not encoded:
        return []
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    if lengths.max() > max_tokens:
        raise ConfigError(f"--max-tokens {max_tokens} is below the longest source sentence "
                          f"({int(lengths.max())} tokens with its tag and </s>)")
    return token_budget_batches(lengths, lengths, max_tokens, max_sentences=batch_size, seed=0)


def deal(costs: list[int], world_size: int) -> list[int]:
    """The rank of every job: the most costly first, each to the least loaded rank (ties: lowest rank,
    then the earlier job), so that the ranks finish together. Deterministic."""
    load = [0] * world_size
    owner = [0] * len(costs)
    for j in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        owner[j] = r
        load[r] += costs[j]
    return owner


def check_options(beam: int, batch_size: int, max_tokens: int, max_sentences: int, max_new_tokens: int) -> None:
    for flag, value, least in (("--beam", beam, 1), ("--batch-size", batch_size, 1), ("--max-tokens", max_tokens, 1),
                               ("--max-sentences", max_sentences, 0), ("--max-new-tokens", max_new_tokens, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{flag} must be an integer >= {least}, got {value!r}")


def gather_on_rank0(done: list, rank: int, world_size: int) -> Optional[list]:
    """Every rank's list of results, on rank 0 (an object collective); None on the other ranks."""
    if world_size == 1:
        return [done]
    parts = [None] * world_size if rank == 0 else None
    torch.distributed.gather_object(done, parts, dst=0)
    return parts if rank == 0 else None


class CT2Translator(Translator):
    """The Translator with a CTranslate2 model (`massive-mt export --format ct2`): the same
    SentencePiece encoding, batches, tags and length limit; CTranslate2's beam search and scoring."""

    def __init__(self, model_dir: str | Path, device: Optional[str] = None, max_len: Optional[int] = None):
        try:
            import ctranslate2
        except ImportError:
            raise MassiveMTError("--engine ct2 needs CTranslate2: pip install 'massive_mt[ct2]'") from None
        from massive_mt.data.spm import Tokenizer
        from massive_mt.io import read_json_object

        model_dir = Path(model_dir)
        for f in ("model.bin", "spm.model", "massive_mt.json"):
            if not (model_dir / f).is_file():
                raise DataError(f"{model_dir / f}: missing (not a CTranslate2 export: massive-mt export --format ct2)")
        self.meta = read_json_object(model_dir / "massive_mt.json")
        self.dtype = f"ct2:{(self.meta.get('format') or {}).get('quantization') or 'float32'}"
        self.tokenizer = Tokenizer(model_dir / "spm.model")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        kind, _, index = device.partition(":")
        self.device = device
        self.model = ctranslate2.Translator(str(model_dir), device=kind, device_index=int(index or 0),
                                            intra_threads=torch.get_num_threads())
        self.max_positions = self.meta.get("max_position_embeddings", max(self.meta.get("max_len", 256), 8) + 2)
        self.max_len = min(max_len or self.meta.get("max_len", 256), self.max_positions - 2)

    def pieces(self, ids: list[int]) -> list[str]:
        return [self.tokenizer.sp.id_to_piece(i) for i in ids]

    def generate(self, encoded: list[list[int]], tgt: str, beam: int = 4, max_new_tokens: int = 128,
                 length_penalty: float = 1.0) -> list[str]:
        tok = self.tokenizer
        limit = min(max_new_tokens, int(1.5 * max(map(len, encoded))) + 10, self.max_positions - 2)
        res = self.model.translate_batch([self.pieces(e) for e in encoded],
                                         target_prefix=[self.pieces([tok.lang_id(tgt)])] * len(encoded),
                                         beam_size=beam, max_decoding_length=limit, length_penalty=length_penalty)
        return [tok.decode([tok.sp.piece_to_id(p) for p in r.hypotheses[0]]) for r in res]

    def nll(self, encoded: list[list[int]], tgt: str, refs: list[str]) -> list[tuple[float, int]]:
        """As Translator.nll: CTranslate2 scores ``[tgt_tag] + tokens`` and the </s> it appends; the
        forced tag is not counted."""
        tok = self.tokenizer
        targets = [self.pieces([tok.lang_id(tgt)] + tok.encode(r)[: self.max_len - 2]) for r in refs]
        res = self.model.score_batch([self.pieces(e) for e in encoded], targets)
        return [(-float(sum(r.log_probs[1:])), len(r.log_probs) - 1) for r in res]


def load_translator(model_dir: str | Path, engine: str = "torch", device: Optional[str] = None,
                    dtype: Optional[str] = None) -> Translator:
    """The Translator (``dtype``: bf16 or fp32, see decode_dtype) or, with engine ct2,
    a CTranslate2 export (its weight type is the export's quantization)."""
    if engine == "ct2":
        return CT2Translator(model_dir, device=device)
    return Translator(model_dir, device=device, dtype=dtype)


def count_arg(least: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}")
        return value
    return parse


def rank_argv(argv: list[str]) -> list[str]:
    """The arguments of the ranks: ``argv`` without --nproc and --launcher, which the launchers'
    own parsers would take for (abbreviations of) their options."""
    out, skip = [], False
    for arg in argv:
        if skip or arg in ("--nproc", "--launcher") or arg.startswith(("--nproc=", "--launcher=")):
            skip = not skip and arg in ("--nproc", "--launcher")
            continue
        out.append(arg)
    return out


