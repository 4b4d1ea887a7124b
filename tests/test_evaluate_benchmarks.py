"""`massive-mt evaluate` on FLORES-200 / FLORES+ directories built here, with chrF++, spBLEU and the
off-target rate, and `--metrics nll` (no decoding), end to end on the trained test model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm

from massive_mt import cli
from massive_mt.data.corpus import load_corpus
from massive_mt.data.language_codes import nllb_code
from massive_mt.data.tasks import parse_task
from massive_mt.scoring import SPM_NAME

N = 6  # sentences per FLORES file


@pytest.fixture(scope="module")
def model_tasks(trained_run) -> list[str]:
    return json.loads((trained_run / "model" / "massive_mt.json").read_text())["tasks"]


def _flores(root: Path, corpus_dir: Path, layout: str, split: str, leave_out: str) -> Path:
    """A multi-way FLORES-shaped set from the corpus's test pairs: line i of every language is the
    translation of the same English string (the first N English strings all languages share)."""
    corpus = load_corpus(corpus_dir)
    langs = sorted({lang for p in corpus.pairs.values() for lang in (p.src, p.tgt)} - {"en"})
    by_lang = {lang: dict(corpus.read("test", "en", lang)) for lang in langs}
    shared = sorted(set.intersection(*(set(d) for d in by_lang.values())))[:N]
    assert len(shared) == N
    (root / split).mkdir(parents=True)
    files = {"en": shared, **{lang: [by_lang[lang][e] for e in shared] for lang in langs if lang != leave_out}}
    for lang, lines in files.items():
        code = nllb_code(lang)
        name = f"{code}.{split}" if layout == "flores200" else f"{split}.{code}"
        (root / split / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def spm_model(real_corpus, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("flores-spm")
    spm.SentencePieceTrainer.train(input=str(real_corpus / "train.en-de.de"), model_prefix=str(d / "m"),
                                   vocab_size=300, minloglevel=2)
    return d / "m.model"


def _sacrebleu_cli(ref: Path, hyp: Path, *args, home: Path) -> float:
    out = subprocess.run([sys.executable, "-m", "sacrebleu", str(ref), "-i", str(hyp), "-b", "-w", "2", *args],
                         env=dict(os.environ, SACREBLEU=str(home)), capture_output=True, text=True, check=True)
    return float(out.stdout)


@pytest.mark.parametrize("layout", ["flores200", "flores+"])
def test_flores_scored_end_to_end(trained_run, real_corpus, model_tasks, spm_model, tmp_path, layout):
    split = "dev" if layout == "flores200" else "devtest"
    left_out = next(parse_task(t)[1] for t in model_tasks if parse_task(t)[1] != "en")
    root = _flores(tmp_path / "flores", real_corpus, layout, split, leave_out=left_out)
    out = tmp_path / "eval"
    rc = cli.main(["evaluate", "--model", str(trained_run / "model"), "--benchmark", "flores200",
                   "--benchmark-dir", str(root), "--split", split, "--beam", "1", "--max-new-tokens", "12",
                   "--spm-model", str(spm_model), "--out", str(out), "--no-progress"])
    assert rc == 0
    report = json.loads((out / "results.json").read_text())
    assert report["scored"]["kind"] == "flores200" and report["split"] == split and report["corpus"] is None
    missing = [t for t in model_tasks if left_out in parse_task(t)]
    assert sorted(report["untested"]) == sorted(missing)            # named, never silently dropped
    assert all(left_out in why and "has no file" in why for why in report["untested"].values())
    scored = {r["task"]: r for r in report["tasks"]}
    assert sorted(scored) == sorted(set(model_tasks) - set(missing)) and scored
    home = tmp_path / "sacrebleu-home"
    (home / "models").mkdir(parents=True)
    (home / "models" / SPM_NAME).write_bytes(spm_model.read_bytes())
    for task, r in scored.items():
        assert r["n_sentences"] == N and r["test_set"]["split"] == f"flores200:{split}"
        ref = Path(r["test_set"]["reference"])
        assert ref.parent == (root / split).resolve() and nllb_code(parse_task(task)[1]) in ref.name
        hyp = out / f"hyp.{split}.{task}.txt"
        assert r["chrf_pp"] == _sacrebleu_cli(ref, hyp, "-m", "chrf", "--chrf-word-order", "2", home=home)
        assert r["spbleu"] == _sacrebleu_cli(ref, hyp, "-m", "bleu", "--tokenize", "flores200", home=home)
        assert "tok:flores200" in r["spbleu_signature"] and "spm-sha256:" in r["spbleu_signature"]
        assert r["off_target"] is None or 0 <= r["off_target"] <= 1
    assert "chrF++" in (out / "results.md").read_text() and "spBLEU" in (out / "results.md").read_text()
    assert not (out / "sacrebleu").exists()     # the model was placed in a temporary folder, not the results


def test_metrics_nll_decodes_nothing(trained_run, real_corpus, tmp_path):
    full, nll_only = tmp_path / "full", tmp_path / "nll"
    common = ["evaluate", "--model", str(trained_run / "model"), "--corpus", str(real_corpus),
              "--max-sentences", "4", "--beam", "1", "--max-new-tokens", "8", "--no-progress"]
    assert cli.main(common + ["--out", str(full)]) == 0
    assert cli.main(common + ["--metrics", "nll", "--out", str(nll_only)]) == 0
    a, b = (json.loads((d / "results.json").read_text()) for d in (full, nll_only))
    assert b["metrics"] == "nll" and not list(nll_only.glob("hyp.*"))
    for ra, rb in zip(a["tasks"], b["tasks"]):
        assert rb["nll"] == ra["nll"] and rb["nll_tokens"] == ra["nll_tokens"]
        assert rb["bleu"] is rb["chrf"] is rb["chrf_pp"] is rb["off_target"] is None
        assert ra["chrf_pp"] is not None
    md = (nll_only / "results.md").read_text()
    assert "BLEU" not in md and "| NLL |" in md and "nll" in b["buckets"]["all"]


def test_benchmark_options_are_checked(trained_run, real_corpus, tmp_path, capsys):
    model = str(trained_run / "model")
    with pytest.raises(SystemExit) as e:
        cli.main(["evaluate", "--model", model, "--benchmark", "flores200"])
    assert e.value.code == 2 and "--benchmark-dir DIR go together" in capsys.readouterr().err
    rc = cli.main(["evaluate", "--model", model, "--benchmark", "flores200", "--benchmark-dir", str(tmp_path),
                   "--out", str(tmp_path / "e")])
    assert rc == 2 and "no devtest/ folder" in capsys.readouterr().err
    rc = cli.main(["evaluate", "--model", model, "--corpus", str(real_corpus), "--spm-model",
                   str(tmp_path / "missing.model"), "--out", str(tmp_path / "e2")])
    assert rc == 2 and "--spm-model" in capsys.readouterr().err
