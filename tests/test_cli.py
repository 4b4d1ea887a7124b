"""Bad input through the command line: a clear message naming the file/line/field, exit status 2,
and nothing partial written."""
import shutil

import pytest

from massive_mt import cli
from conftest import REPO, run_ranks, train_args


def copy_corpus(src, dst, langs=("de", "fr")):
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "manifest.json" and any(f".en-{l}." in f.name for l in langs):
            shutil.copy(f, dst / f.name)
    return dst


def test_a_renamed_command_is_refused_naming_the_new_one(tmp_path, capsys):
    assert cli.main(["task-weights", "--run", str(tmp_path)]) == 2
    assert "renamed to 'massive-mt task-scales'" in capsys.readouterr().err


def test_prepare_rejects_line_count_mismatch_and_writes_nothing(real_corpus, tmp_path, capsys):
    corpus = copy_corpus(real_corpus, tmp_path / "corpus")
    bad = corpus / "train.en-fr.fr"
    bad.write_text("".join(bad.read_text().splitlines(keepends=True)[:-1]), encoding="utf-8")
    out = tmp_path / "data-bin"
    assert cli.main(["prepare", "--corpus", str(corpus), "--out", str(out), "--vocab-size", "500"]) == 2
    err = capsys.readouterr().err
    assert "train.en-fr.fr" in err and "train.en-fr.en" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]  # no data-bin, no temporary directory


def test_prepare_rejects_invalid_utf8_with_line(real_corpus, tmp_path, capsys):
    corpus = copy_corpus(real_corpus, tmp_path / "corpus")
    bad = corpus / "valid.en-de.de"
    lines = bad.read_bytes().split(b"\n")
    lines[2] = b"caf\xe9"
    bad.write_bytes(b"\n".join(lines))
    assert cli.main(["prepare", "--corpus", str(corpus), "--out", str(tmp_path / "db")]) == 2
    err = capsys.readouterr().err
    assert "valid.en-de.de" in err and "line 3" in err


def test_prepare_rejects_bad_language_code(real_corpus, tmp_path, capsys):
    corpus = copy_corpus(real_corpus, tmp_path / "corpus", langs=("de",))
    for f in list(corpus.iterdir()):
        f.rename(corpus / f.name.replace("en-de", "en-Deutsch").replace(".de", ".Deutsch"))
    assert cli.main(["prepare", "--corpus", str(corpus), "--out", str(tmp_path / "db")]) == 2
    assert "Deutsch" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("override, field", [("sampling.temperature=-1", "sampling.temperature"),
                                             ("train.max_steps=ten", "train.max_steps"),
                                             ("data.langs=[xx]", "data.langs")])
def test_train_rejects_bad_config_and_writes_nothing(data_bin, tmp_path, override, field):
    out = tmp_path / "run"
    p = run_ranks(1, train_args(data_bin, out, "zero2.json", override), check=False)
    assert p.returncode != 0
    assert field in p.stderr and "error" in p.stderr
    assert not out.exists()


@pytest.mark.slow
def test_train_rejects_contradicting_ds_config(data_bin, tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 2}, "gradient_accumulation_steps": 7}')
    args = train_args(data_bin, tmp_path / "run", "zero2.json")
    args[args.index(str(REPO / "ds_configs" / "zero2.json"))] = str(ds)
    p = run_ranks(1, args, check=False)
    assert p.returncode != 0
    assert "ds.json" in p.stderr and "gradient_accumulation_steps" in p.stderr
    assert not (tmp_path / "run").exists()
