"""Evaluation: beam search with the forced target tag, sacrebleu scores and signatures, reports."""
import json
from pathlib import Path

import pytest

from massive_mt import cli
from massive_mt.errors import ConfigError
from massive_mt.data.tasks import resource_buckets
from massive_mt.evaluation.decoding import Translator
from massive_mt.evaluation.evaluate import evaluate, markdown_table
from massive_mt.scoring import score


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


def test_results_identify_the_test_set(trained_run, real_corpus, tmp_path):
    """results.json says which files were evaluated (paths, sha256, sentences, split) for comparisons."""
    import hashlib

    rep = evaluate(trained_run / "model", real_corpus, tasks=["ja-en", "en-fr"], max_sentences=3, beam=1,
                   max_new_tokens=4, progress=False, out_dir=tmp_path / "e")
    assert rep == json.loads((tmp_path / "e" / "results.json").read_text())
    ja_en, en_fr = (r["test_set"] for r in rep["tasks"])
    assert ja_en["split"] == en_fr["split"] == "test" and ja_en["sentences"] == en_fr["sentences"] == 3
    assert ja_en["reference"] == str((real_corpus / "test.en-ja.en").resolve())    # reversed pair file
    assert ja_en["source"] == str((real_corpus / "test.en-ja.ja").resolve())
    assert en_fr["reference"] == str((real_corpus / "test.en-fr.fr").resolve())
    for t in (ja_en, en_fr):
        for side in ("source", "reference"):
            with open(t[side], "rb") as f:
                assert t[f"{side}_sha256"] == hashlib.file_digest(f, "sha256").hexdigest()
    assert rep["speed"]["world_size"] == 1 and rep["speed"]["sentences"] == 6 == sum(rep["speed"]["rank_sentences"])


def test_test_nll_is_the_teacher_forced_loss_of_training(trained_run, real_corpus, tmp_path):
    """Per-task test NLL (nats per reference token, the forced tag not scored) equals the unsmoothed
    cross-entropy of the training batch format on the same sentences; per-sentence values go to
    nll.SPLIT.TASK.tsv in the order of the source file."""
    import math

    import torch

    rep = evaluate(trained_run / "model", real_corpus, tasks=["en-fr"], max_sentences=6, beam=1,
                   max_new_tokens=4, progress=False, out_dir=tmp_path / "e")
    r = rep["tasks"][0]
    lines = [l.split("\t") for l in (tmp_path / "e" / "nll.test.en-fr.tsv").read_text().splitlines()]
    assert len(lines) == 6 and r["nll_tokens"] == sum(int(n) for _, n in lines)
    assert r["nll"] == round(math.fsum(float(x) for x, _ in lines) / r["nll_tokens"], 4)
    assert rep["buckets"]["all"]["nll"] == r["nll"] and "| NLL |" in (tmp_path / "e" / "results.md").read_text()

    tr = Translator(trained_run / "model")
    from massive_mt.data.corpus import load_corpus

    (src, ref), = load_corpus(real_corpus).read("test", "en", "fr")[:1]
    enc = tr.encode([src], "en")
    labels = torch.tensor([[tr.tokenizer.lang_id("fr")] + tr.tokenizer.encode(ref) + [tr.tokenizer.eos_id]])
    dec = torch.cat([torch.tensor([[tr.tokenizer.eos_id]]), labels[:, :-1]], dim=1)
    with torch.no_grad():
        logits = tr.model(input_ids=torch.tensor(enc), decoder_input_ids=dec).logits
    want = torch.nn.functional.cross_entropy(logits[0, 1:], labels[0, 1:], reduction="sum").item()
    assert float(lines[0][0]) == pytest.approx(want, rel=1e-5) and int(lines[0][1]) == labels.shape[1] - 1


def test_report_says_which_set_it_scored_and_lists_untested_tasks(trained_run, real_corpus, tmp_path, capsys):
    """The default corpus's per-pair split is named as such; a multi-way corpus's test set is named as
    the multi-way set; a task whose pair has no test sentences is listed, not silently dropped."""
    import shutil

    rep = evaluate(trained_run / "model", real_corpus, tasks=["ja-en"], max_sentences=1, beam=1,
                   max_new_tokens=2, progress=False)
    assert rep["scored"]["kind"] == "per-pair" and rep["untested"] == {}

    corpus = tmp_path / "multiway"
    shutil.copytree(real_corpus, corpus)
    manifest = json.loads((corpus / "manifest.json").read_text())
    manifest["test_sets"] = {"test": {"kind": "multiway", "english_strings": 123}}
    manifest["pairs"]["en-ja"]["test"] = 0                     # ja translated none of the held-out strings
    (corpus / "manifest.json").write_text(json.dumps(manifest))
    for side in ("en", "ja"):
        (corpus / f"test.en-ja.{side}").unlink()
    out = tmp_path / "e"
    rc = cli.main(["evaluate", "--model", str(trained_run / "model"), "--corpus", str(corpus), "--tasks",
                   "ja-en", "fr-en", "--max-sentences", "1", "--beam", "1", "--max-new-tokens", "2", "--out", str(out)])
    assert rc == 0
    rep = json.loads((out / "results.json").read_text())
    assert [r["task"] for r in rep["tasks"]] == ["fr-en"] and list(rep["untested"]) == ["ja-en"]
    assert rep["scored"] == {"corpus": str(corpus), "split": "test", "kind": "multiway", "english_strings": 123,
                             "description": rep["scored"]["description"]}
    printed = capsys.readouterr().out
    assert "multi-way set" in printed and "123 English strings" in printed and "ja-en" in printed
    assert "ja-en" in (out / "results.md").read_text()
    rc = cli.main(["evaluate", "--model", str(trained_run / "model"), "--corpus", str(corpus), "--tasks", "ja-en",
                   "--out", str(tmp_path / "e2")])
    assert rc == 2 and "none of the tasks has 'test' sentences" in capsys.readouterr().err


def test_bf16_decoding_on_cpu_is_finite_and_recorded(trained_run, real_corpus, tmp_path, capsys):
    """--dtype bf16 decodes with a bf16 model (on the CPU too); the default on the CPU is fp32; the
    dtype is in results.json; the test NLL stays close to fp32's."""
    import math

    import torch

    tr = Translator(trained_run / "model", device="cpu", dtype="bf16")
    assert tr.dtype == "bf16" and {p.dtype for p in tr.model.parameters()} == {torch.bfloat16}
    assert Translator(trained_run / "model", device="cpu").dtype == "fp32"
    reports = {}
    for dtype in ("bf16", "fp32"):
        out = tmp_path / dtype
        assert _evaluate_cli(trained_run / "model", real_corpus, "--tasks", "en-fr", "en-de",
                             "--max-sentences", "4", "--dtype", dtype, out=out) == 0
        reports[dtype] = json.loads((out / "results.json").read_text())
        assert reports[dtype]["dtype"] == dtype
        for r in reports[dtype]["tasks"]:
            assert r["n_sentences"] == 4 and all(math.isfinite(r[k]) for k in ("bleu", "chrf", "nll"))
            assert len((out / f"hyp.test.{r['task']}.txt").read_text().splitlines()) == 4
    for b, f in zip(reports["bf16"]["tasks"], reports["fp32"]["tasks"]):
        assert b["nll_tokens"] == f["nll_tokens"] and b["nll"] == pytest.approx(f["nll"], rel=0.05)
    with pytest.raises(SystemExit) as e:
        _evaluate_cli(trained_run / "model", real_corpus, "--dtype", "fp16", out=tmp_path / "x")
    assert e.value.code == 2
    assert "argument --dtype: invalid choice: 'fp16'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="dtype 'half'"):
        Translator(trained_run / "model", device="cpu", dtype="half")


def test_batches_are_token_bounded_and_in_input_order(trained_run, monkeypatch):
    tr = Translator(trained_run / "model", device="cpu")
    sentences = ["Save", "Delete this item permanently from the list of saved items?", "Cancel", "Sign in",
                 "Your e-mail address has been confirmed", "OK", "Sign in"]
    encoded = tr.encode(sentences, "en")
    batches = []

    def echo(self, rows, tgt, *args, **kwargs):           # the hypothesis of a row: its own token ids
        batches.append([len(e) for e in rows])
        return [" ".join(map(str, e)) for e in rows]

    monkeypatch.setattr(Translator, "generate", echo)
    out = tr.translate(sentences, "en", "fr", beam=2, max_new_tokens=8, batch_size=3, max_tokens=40)
    assert out == [" ".join(map(str, e)) for e in encoded]          # every sentence once, in the input order
    assert all(len(b) <= 3 and len(b) * max(b) <= 40 for b in batches) and len(batches) >= 3
    assert all(max(a) <= min(b) for a, b in zip(batches, batches[1:]))  # length-sorted
    with pytest.raises(ConfigError, match="--max-tokens 5 is below the longest source sentence"):
        tr.translate(sentences, "en", "fr", max_tokens=5)


def test_deal_balances_and_is_deterministic():
    from massive_mt.evaluation.decoding import deal

    costs = [50, 10, 40, 30, 20, 20]
    owner = deal(costs, 2)
    assert owner == deal(costs, 2) and deal(costs, 1) == [0] * 6
    loads = [sum(c for c, r in zip(costs, owner) if r == k) for k in (0, 1)]
    assert sorted(loads) == [80, 90]
    assert sorted(deal([5, 5, 5], 4)) == [0, 1, 2]    # more ranks than jobs: some ranks idle


@pytest.fixture()
def model_copy(trained_run, tmp_path):
    import shutil

    return Path(shutil.copytree(trained_run / "model", tmp_path / "model"))


def _evaluate_cli(model, corpus, *extra, out=None):
    return cli.main(["evaluate", "--model", str(model), "--corpus", str(corpus), "--max-sentences", "2",
                     "--beam", "1", "--max-new-tokens", "4", "--no-progress", *extra]
                    + (["--out", str(out)] if out is not None else []))


def test_model_without_weights_or_truncated_names_them(model_copy, real_corpus, tmp_path, capsys):
    weights = model_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert _evaluate_cli(model_copy, real_corpus, out=tmp_path / "e") == 2
    err = capsys.readouterr().err
    assert f"massive-mt evaluate: error: {weights}: cannot load the model weights" in err and "Traceback" not in err
    weights.unlink()
    assert _evaluate_cli(model_copy, real_corpus, out=tmp_path / "e") == 2
    assert f"error: {model_copy}: no model weights (model.safetensors)" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_non_finite_model_is_refused(model_copy, real_corpus, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    weights = model_copy / "model.safetensors"
    state = load_file(weights)
    name = next(n for n in sorted(state) if n.endswith("final_layer_norm.weight"))   # not a tied tensor
    state[name][0] = float("nan")
    save_file(state, weights, metadata={"format": "pt"})
    assert _evaluate_cli(model_copy, real_corpus, out=tmp_path / "e") == 2
    err = capsys.readouterr().err
    assert f"error: {weights}: the model is non-finite: NaN or inf in 1 of" in err
    assert not (tmp_path / "e").exists()


def test_bad_task_names_and_flags(trained_run, real_corpus, tmp_path, capsys):
    model = trained_run / "model"
    assert _evaluate_cli(model, real_corpus, "--tasks", "en-pt-BR", out=tmp_path / "e") == 2
    err = capsys.readouterr().err
    assert "task 'en-pt-BR'" in err and "language codes use '_'" in err and "pt_BR" in err
    for flag, value in (("--beam", "0"), ("--max-sentences", "-1"), ("--batch-size", "0"), ("--max-tokens", "0"),
                        ("--nproc", "0")):
        with pytest.raises(SystemExit) as e:
            _evaluate_cli(model, real_corpus, flag, value, out=tmp_path / "e")
        assert e.value.code == 2 and f"argument {flag}: must be >= " in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--max-sentences must be an integer >= 0, got -1"):
        evaluate(model, real_corpus, max_sentences=-1)
    assert not (tmp_path / "e").exists()


def test_unwritable_out_is_refused_before_translating(trained_run, real_corpus, tmp_path, capsys, monkeypatch):
    from transformers import M2M100ForConditionalGeneration

    calls = []
    monkeypatch.setattr(M2M100ForConditionalGeneration, "generate", lambda *a, **k: calls.append(1))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert _evaluate_cli(trained_run / "model", real_corpus, out=blocker / "eval") == 2
    assert capsys.readouterr().err == f"massive-mt evaluate: error: {blocker / 'eval'}: Not a directory\n"
    assert calls == []


def _read_only_mount_available() -> bool:
    import shutil
    import subprocess

    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o ro none /mnt"], capture_output=True).returncode == 0


def _in_mount_namespace(mount: str, target, cmd: list[str]):
    """Run ``cmd`` with a tmpfs mounted (``mount`` options) on ``target`` in a private mount namespace."""
    import subprocess

    from conftest import dist_env

    return subprocess.run(["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o {mount} none "{target}" && exec "$@"',
                           "sh", *cmd], capture_output=True, text=True, env=dist_env(), timeout=300)


@pytest.mark.slow
@pytest.mark.skipif(not _read_only_mount_available(), reason="needs `unshare -rm` and tmpfs mounts (user namespaces)")
@pytest.mark.parametrize("command", ["evaluate", "prepare", "build-corpus"])
def test_read_only_file_system_gives_one_line(command, real_corpus, tmp_path, request):
    """The command line's error boundary on a really read-only file system (a tmpfs mounted ro in a
    private mount namespace): EROFS in one line, exit 2; evaluate refuses before translating."""
    import sys

    from conftest import TEST_WHEEL

    ro = tmp_path / "ro"
    ro.mkdir()
    out = ro / "out"
    if command == "evaluate":
        args = ["--model", str(request.getfixturevalue("trained_run") / "model"), "--corpus", str(real_corpus),
                "--out", str(out), "--max-sentences", "2", "--no-progress"]
    else:
        args = {"prepare": ["--corpus", str(real_corpus), "--out", str(out), "--vocab-size", "4000", "--workers", "1"],
                "build-corpus": ["--out", str(out), "--wheels", TEST_WHEEL, "--min-pairs", "100"]}[command]
    p = _in_mount_namespace("ro", ro, [sys.executable, "-m", "massive_mt.cli", command, *args])
    assert p.returncode == 2, p.stderr
    line = p.stderr.splitlines()[-1]    # `out`, or the directory staged beside it (prepare, build-corpus)
    assert line.startswith(f"massive-mt {command}: error: {ro}/") and line.endswith(": Read-only file system")
    assert line == f"massive-mt {command}: error: {out}: Read-only file system" or command != "evaluate"
    assert "Traceback" not in p.stderr


@pytest.mark.slow
@pytest.mark.skipif(not _read_only_mount_available(), reason="needs `unshare -rm` and tmpfs mounts (user namespaces)")
def test_full_disk_gives_one_line_and_leaves_nothing(real_corpus, tmp_path):
    import sys

    full = tmp_path / "full"
    full.mkdir()
    script = (f'"$@"; rc=$?; ls -A "{full}"; exit $rc')    # what the failed command left on the small disk
    p = _in_mount_namespace("size=64k", full, ["sh", "-c", script, "sh", sys.executable, "-m", "massive_mt.cli",
                                               "prepare", "--corpus", str(real_corpus), "--out", str(full / "bin"),
                                               "--vocab-size", "4000", "--workers", "1"])
    assert p.returncode == 2, p.stderr
    assert p.stderr.splitlines()[-1] == f"massive-mt prepare: error: {full / 'bin'}: No space left on device"
    assert "Traceback" not in p.stderr and p.stdout == ""   # staged directory removed: the disk is empty
