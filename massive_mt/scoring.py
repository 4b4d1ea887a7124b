"""Corpus-level scores of one task's hypotheses, with sacrebleu's signatures: BLEU, chrF,
chrF++ (``CHRF(word_order=2)``), and spBLEU with the FLORES-200 SentencePiece model.

sacrebleu 2.6 loads that model from ``$SACREBLEU/models/flores200sacrebleuspm`` and downloads it
when it is absent; ``SpBleu`` places the given local file there (a run-local folder), never
downloads, and records the model's sha256 next to the signature (which says only
``tok:flores200``).
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

from massive_mt.errors import DataError
from massive_mt.io import sha256_file

# sacrebleu tokenizers for scripts written without spaces; chrF needs none
BLEU_TOKENIZE = {"zh": "zh", "ja": "char", "th": "char", "my": "char", "km": "char", "lo": "char"}
SPM_NAME = "flores200sacrebleuspm"   # the file name sacrebleu looks for (basename of its URL)


def bleu_tokenize_for(lang: str) -> str:
    return BLEU_TOKENIZE.get(lang.split("_")[0], "13a")


@contextmanager
def _no_download(models_root: Path):
    """sacrebleu's SentencePiece tokenizer reads from ``models_root``; a download attempt fails."""
    from sacrebleu.tokenizers import tokenizer_spm

    def refuse(url, path, *args, **kwargs):
        raise DataError(f"sacrebleu tried to download {url} to {path}: spBLEU takes its model from --spm-model")
    saved = tokenizer_spm.SACREBLEU_DIR, tokenizer_spm.download_file
    tokenizer_spm.SACREBLEU_DIR, tokenizer_spm.download_file = str(models_root), refuse
    try:
        yield
    finally:
        tokenizer_spm.SACREBLEU_DIR, tokenizer_spm.download_file = saved


class SpBleu:
    """spBLEU (BLEU on FLORES-200 SentencePiece pieces) from a local model file."""

    def __init__(self, spm_model: str | Path, workdir: str | Path):
        import sacrebleu

        spm_model = Path(spm_model)
        if not spm_model.is_file():
            raise DataError(f"--spm-model {spm_model}: file not found")
        self.sha256 = sha256_file(spm_model)
        root = Path(workdir) / "sacrebleu"
        (root / "models").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(spm_model, root / "models" / SPM_NAME)
        with _no_download(root):
            try:
                self.metric = sacrebleu.BLEU(tokenize="flores200")
            except (RuntimeError, OSError) as err:
                raise DataError(f"--spm-model {spm_model}: not a SentencePiece model ({err})") from None

    def __call__(self, hyps: list[str], refs: list[str]) -> float:
        return self.metric.corpus_score(hyps, [refs]).score

    @property
    def signature(self) -> str:
        """sacrebleu's signature (after a score) with the model's sha256."""
        return f"{self.metric.get_signature()}|spm-sha256:{self.sha256}"


def score(hyps: list[str], refs: list[str], tgt_lang: str) -> tuple[float, float, str, str]:
    """(BLEU, chrF, BLEU signature, chrF signature) of one task."""
    import sacrebleu

    bleu = sacrebleu.BLEU(tokenize=bleu_tokenize_for(tgt_lang))
    chrf = sacrebleu.CHRF()
    b = bleu.corpus_score(hyps, [refs])
    c = chrf.corpus_score(hyps, [refs])
    return b.score, c.score, str(bleu.get_signature()), str(chrf.get_signature())


def extra_scores(hyps: list[str], refs: list[str], spbleu: SpBleu | None = None) -> tuple[dict, dict]:
    """({metric: score}, {metric: signature}) beside BLEU and chrF: chrf_pp (chrF++) and, with
    ``spbleu``, spbleu."""
    import sacrebleu

    chrf_pp = sacrebleu.CHRF(word_order=2)
    scores = {"chrf_pp": chrf_pp.corpus_score(hyps, [refs]).score}
    signatures = {"chrf_pp": str(chrf_pp.get_signature())}
    if spbleu is not None:
        scores["spbleu"] = spbleu(hyps, refs)
        signatures["spbleu"] = spbleu.signature
    return scores, signatures
