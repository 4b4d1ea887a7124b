"""`massive-mt translate` (stdin to stdout, one line per line, --nproc), plain transformers `generate`
on an export giving the same text, and the CTranslate2 export and engine (translate, evaluate).

Most tests use a randomly initialised `test`-preset model written by the export writer with the
trained run's tokenizer and metadata: random weights decode every sentence to the length limit
with varied tokens, a stricter comparison than the 40-step model, which mostly emits </s>."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, dist_env
from massive_mt import cli
from massive_mt.evaluation.decoding import Translator

SENTENCES = ["Save the file", "", "Delete this item?", "Your e-mail address has been confirmed.", "",
             "Sign in with your account", "Password", ""]


@pytest.fixture(scope="module")
def random_export(trained_run, tmp_path_factory) -> Path:
    from massive_mt.data.spm import Tokenizer
    from massive_mt.engine.export import write_hf
    from massive_mt.engine.model import build_model

    src = trained_run / "model"
    torch.manual_seed(0)
    model = build_model("test", Tokenizer(src / "spm.model").vocab_size, 48).eval()
    meta = json.loads((src / "massive_mt.json").read_text())
    return write_hf(tmp_path_factory.mktemp("random") / "model", model, src, meta)   # src holds spm.model


def translate_cli(*args: str, stdin: str, nproc: int = 1) -> subprocess.CompletedProcess:
    env = dict(dist_env(), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "massive_mt.cli", "translate", *args, "--nproc", str(nproc)],
                          input=stdin, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


def test_stdin_to_stdout_keeps_every_line(random_export):
    p = translate_cli("--model", str(random_export), "--src", "en", "--tgt", "fr", "--beam", "2",
                      "--max-new-tokens", "12", stdin="\n".join(SENTENCES) + "\n")
    assert p.returncode == 0, p.stderr[-4000:]
    out = p.stdout.split("\n")
    assert out[-1] == "" and len(out) - 1 == len(SENTENCES)
    for line, hyp in zip(SENTENCES, out):
        assert (hyp == "") == (line == "")
    torch.set_num_threads(1)
    tr = Translator(random_export, device="cpu")
    want = tr.translate([s for s in SENTENCES if s], "en", "fr", beam=2, max_new_tokens=12)
    assert [h for s, h in zip(SENTENCES, out) if s] == want


def test_two_ranks_give_the_output_of_one_process(random_export, tmp_path):
    (tmp_path / "in.txt").write_text("\n".join(SENTENCES * 3) + "\n", encoding="utf-8")
    args = ("--model", str(random_export), "--src", "en", "--tgt", "de", "--beam", "2", "--max-new-tokens", "12",
            "--batch-size", "2", "--input", str(tmp_path / "in.txt"))
    one = translate_cli(*args, stdin="")
    two = translate_cli(*args, stdin="", nproc=2)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-4000:]
    assert "--nproc_per_node 2" in two.stderr
    assert two.stdout == one.stdout and one.stdout.count("\n") == len(SENTENCES) * 3


def test_plain_transformers_generate_equals_translate(random_export, tmp_path):
    """The README's lines: AutoTokenizer + AutoModelForSeq2SeqLM.generate with the target tag forced."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    sentences = [s for s in SENTENCES if s]
    (tmp_path / "in.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
    assert cli.main(["translate", "--model", str(random_export), "--src", "en", "--tgt", "ja", "--beam", "3",
                     "--batch-size", "1", "--input", str(tmp_path / "in.txt"),
                     "--output", str(tmp_path / "out.txt")]) == 0
    ours = (tmp_path / "out.txt").read_text(encoding="utf-8").splitlines()

    tok = AutoTokenizer.from_pretrained(str(random_export))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(random_export))
    theirs = []
    for s in sentences:
        batch = tok("__en__ " + s, return_tensors="pt")
        gen = model.generate(**batch, forced_bos_token_id=tok.convert_tokens_to_ids("__ja__"), num_beams=3,
                             max_new_tokens=int(1.5 * batch.input_ids.shape[1]) + 10)
        theirs.append(tok.decode(gen[0], skip_special_tokens=True))
    assert theirs == ours and all(ours)


def test_unknown_language_and_wrong_engine_are_refused(random_export, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("Save\n")
    base = ["translate", "--model", str(random_export), "--input", str(tmp_path / "in.txt")]
    assert cli.main(base + ["--src", "en", "--tgt", "xx"]) == 2
    err = capsys.readouterr().err
    assert "--tgt xx" in err and "has no language 'xx'" in err and "de en fr ja ru" in err, err
    assert cli.main(base + ["--src", "ar", "--tgt", "fr"]) == 2      # a tag of the tokenizer, not trained on
    assert "--src ar" in capsys.readouterr().err
    assert cli.main(base + ["--src", "en", "--tgt", "fr", "--engine", "ct2"]) == 2
    assert "model.bin: missing" in capsys.readouterr().err


def test_ct2_export_translates_and_evaluates_as_torch(trained_run, random_export, real_corpus, tmp_path):
    """fp32 CTranslate2 gives torch's hypotheses and test NLL; an int8 export loads and translates."""
    import ctranslate2  # noqa: F401  (the test extra installs it)

    from massive_mt.engine.export import write_ct2

    hf = shutil.copytree(random_export, tmp_path / "hf")
    ct2 = write_ct2(tmp_path / "ct2", hf, None)
    assert {"model.bin", "spm.model", "massive_mt.json", "tokenizer.json"} <= set(os.listdir(ct2))
    (tmp_path / "in.txt").write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    outs = {}
    for engine, model in (("torch", random_export), ("ct2", ct2)):
        assert cli.main(["translate", "--model", str(model), "--engine", engine, "--src", "en", "--tgt", "ru",
                         "--beam", "2", "--input", str(tmp_path / "in.txt"),
                         "--output", str(tmp_path / f"{engine}.txt")]) == 0
        outs[engine] = (tmp_path / f"{engine}.txt").read_text(encoding="utf-8")
    assert outs["ct2"] == outs["torch"] and outs["ct2"].count("\n") == len(SENTENCES)

    reports = {}
    for engine, model in (("torch", random_export), ("ct2", ct2)):
        assert cli.main(["evaluate", "--model", str(model), "--engine", engine, "--corpus", str(real_corpus),
                         "--tasks", "en-fr", "--max-sentences", "4", "--beam", "2", "--max-new-tokens", "8",
                         "--out", str(tmp_path / f"eval-{engine}"), "--no-progress"]) == 0
        reports[engine] = json.loads((tmp_path / f"eval-{engine}" / "results.json").read_text())
    assert reports["ct2"]["engine"] == "ct2"
    t, c = reports["torch"]["tasks"][0], reports["ct2"]["tasks"][0]
    assert (c["bleu"], c["chrf"], c["nll_tokens"]) == (t["bleu"], t["chrf"], t["nll_tokens"])
    assert c["nll"] == pytest.approx(t["nll"], rel=1e-4)

    assert cli.main(["export", str(trained_run), "--format", "ct2", "--quantization", "int8",
                     "--out", str(tmp_path / "int8")]) == 0
    meta = json.loads((tmp_path / "int8" / "massive_mt.json").read_text())
    assert meta["format"]["engine"] == "ct2" and meta["format"]["quantization"] == "int8"
    assert cli.main(["translate", "--model", str(tmp_path / "int8"), "--engine", "ct2", "--src", "en", "--tgt", "fr",
                     "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "int8.txt")]) == 0
    assert (tmp_path / "int8.txt").read_text(encoding="utf-8").count("\n") == len(SENTENCES)
