"""Evaluation: beam search with the forced target tag, sacrebleu scores and signatures, reports."""
import json

import pytest

from massive_mt import cli
from massive_mt.evaluate import Translator, evaluate, markdown_table, resource_buckets, score


def test_score_identity_and_signatures():
    refs = ["Save the file", "Delete this item?"]
    bleu, chrf, bsig, csig = score(refs, refs, "fr")
    assert bleu == pytest.approx(100.0) and chrf == pytest.approx(100.0)
    assert "tok:13a" in bsig and "nrefs:1" in bsig and csig.startswith("nrefs:1")
    assert "tok:zh" in score(["保存"], ["保存"], "zh_Hans")[2]
    assert "tok:char" in score(["保存"], ["保存"], "ja")[2]


def test_resource_buckets_by_training_size():
    b = resource_buckets({"en-a": 900, "en-b": 500, "en-c": 100, "en-d": 50, "en-e": 20, "en-f": 10})
    assert [b[t] for t in ("en-a", "en-b", "en-c", "en-d", "en-e", "en-f")] == \
        ["high", "high", "medium", "medium", "low", "low"]


def test_translator_forces_target_language(trained_run):
    tr = Translator(trained_run / "model", device="cpu")
    out = tr.translate(["Save", "Delete"], "en", "fr", beam=2, max_new_tokens=8)
    assert len(out) == 2 and all(isinstance(o, str) for o in out)
    gen = tr.model.generate(input_ids=__import__("torch").tensor([[tr.tokenizer.lang_id("en"), 10, 2]]),
                            num_beams=2, max_new_tokens=4, forced_bos_token_id=tr.tokenizer.lang_id("ja"),
                            decoder_start_token_id=tr.tokenizer.eos_id)
    assert gen[0, 1].item() == tr.tokenizer.lang_id("ja")


def test_evaluate_writes_reports(trained_run, real_corpus, tmp_path):
    out = tmp_path / "eval"
    rc = cli.main(["evaluate", "--model", str(trained_run / "model"), "--corpus", str(real_corpus),
                   "--max-sentences", "5", "--beam", "2", "--max-new-tokens", "16", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "results.json").read_text())
    tasks = {r["task"]: r for r in report["tasks"]}
    assert sorted(tasks) == sorted(json.loads((trained_run / "model" / "massive_mt.json").read_text())["tasks"])
    for t, r in tasks.items():
        assert r["n_sentences"] == 5 and 0 <= r["bleu"] <= 100 and 0 <= r["chrf"] <= 100
        assert r["bucket"] in ("high", "medium", "low") and r["train_sentences"] > 0
        assert len((out / f"hyp.test.{t}.txt").read_text().splitlines()) == 5
    assert report["buckets"]["all"]["tasks"] == len(tasks)
    md = (out / "results.md").read_text()
    assert "| task |" in md and "sacrebleu signatures" in md and md == markdown_table(report) + "\n"


def test_evaluate_other_direction_and_missing_files(trained_run, real_corpus, tmp_path, capsys):
    # a task the corpus has but in the reverse orientation of its files (ja-en from en-ja files)
    rep = evaluate(trained_run / "model", real_corpus, tasks=["ja-en"], max_sentences=2, beam=1,
                   max_new_tokens=4, progress=False)
    assert rep["tasks"][0]["task"] == "ja-en" and rep["tasks"][0]["n_sentences"] == 2
    rc = cli.main(["evaluate", "--model", str(trained_run / "model"), "--corpus", str(real_corpus),
                   "--tasks", "en-xx", "--out", str(tmp_path / "e")])
    assert rc == 2 and "en-xx" in capsys.readouterr().err
    rc = cli.main(["evaluate", "--model", str(tmp_path), "--corpus", str(real_corpus)])
    assert rc == 2 and "config.json" in capsys.readouterr().err
