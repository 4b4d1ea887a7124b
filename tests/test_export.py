"""`massive-mt export`: ZeRO shards consolidated offline, checkpoint averaging, the Hugging Face
directory (weights, tokenizer with the SentencePiece ids, generation config, metadata), refused input."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TEST_LANGS, run_ranks, train_args
from massive_mt import cli
from massive_mt.engine.checkpoint import MARKER
from massive_mt.engine.export import consolidate

FILES = {"config.json", "generation_config.json", "massive_mt.json", "model.safetensors", "spm.model",
         "tokenizer.json", "tokenizer_config.json"}


def export(run: Path, out: Path, *args: str) -> int:
    return cli.main(["export", str(run), "--out", str(out), *args])


def weights(d: Path) -> dict:
    return load_file(str(d / "model.safetensors"))


def test_last_tag_offline_equals_the_end_of_run_export(trained_run, tmp_path):
    """The offline consolidation of step40 gives exactly the weights training gathered from its live
    engine at step 40; both directories are written by the same writer."""
    assert export(trained_run, tmp_path / "last") == 0
    a, b = weights(tmp_path / "last"), weights(trained_run / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert {p.name for p in (tmp_path / "last").iterdir()} == FILES
    assert {p.name for p in (trained_run / "model").iterdir()} == FILES
    meta = json.loads((tmp_path / "last" / "massive_mt.json").read_text())
    assert meta["steps"] == 40 and meta["checkpoint"]["steps"] == [40] and meta["checkpoint"]["select"] == "last"
    assert meta["tasks"] == json.loads((trained_run / "model" / "massive_mt.json").read_text())["tasks"]
    assert len(meta["tokenizer"]["spm_sha256"]) == 64 and len(meta["data_bin"]["manifest_sha256"]) == 64
    gen = json.loads((tmp_path / "last" / "generation_config.json").read_text())
    assert (gen["decoder_start_token_id"], gen["eos_token_id"], gen["pad_token_id"], gen["num_beams"]) == (2, 2, 1, 4)


def test_avg2_is_the_mean_of_the_two_tags(trained_run, tmp_path):
    assert export(trained_run, tmp_path / "avg", "--step", "avg:2") == 0
    s20, s40 = (consolidate(trained_run / "checkpoints" / t) for t in ("step20", "step40"))
    avg = weights(tmp_path / "avg")
    assert set(avg) <= set(s20)
    differ = 0
    for k, v in avg.items():
        torch.testing.assert_close(v, (s20[k] + s40[k]) / 2, rtol=0, atol=1e-7)
        differ += not torch.equal(s20[k], s40[k])
    assert differ > 0                                      # the two tags are not the same weights
    meta = json.loads((tmp_path / "avg" / "massive_mt.json").read_text())
    assert meta["checkpoint"]["steps"] == [20, 40] and meta["checkpoint"]["select"] == "avg:2"


def test_tokenizer_json_has_the_sentencepiece_ids(trained_run, real_corpus):
    """AutoTokenizer on the export: "__src__ " + text gives [tag] + SentencePiece ids + [</s>] on corpus
    sentences of every language; decoding drops the tags."""
    from transformers import AutoTokenizer

    from massive_mt.data.spm import Tokenizer

    model = trained_run / "model"
    hf, sp = AutoTokenizer.from_pretrained(str(model)), Tokenizer(model / "spm.model")
    assert len(hf) == sp.vocab_size
    checked = 0
    for path in sorted(real_corpus.glob("test.*")):
        lang = path.name.rsplit(".", 1)[1]
        for line in path.read_text(encoding="utf-8").splitlines()[:15]:
            want = [sp.lang_id(lang)] + sp.encode(line) + [sp.eos_id]
            assert hf(f"__{lang}__ " + line).input_ids == want, (path, line)
            assert hf.decode(want, skip_special_tokens=True) == sp.decode(want)
            checked += 1
    text = "  Open  the\tfile  "                          # spaces SentencePiece normalises
    assert hf("__fr__" + text).input_ids == [sp.lang_id("fr")] + sp.encode(text) + [sp.eos_id]
    assert checked > 200
    for lang in sp.langs:
        assert hf.convert_tokens_to_ids(f"__{lang}__") == sp.lang_id(lang)


def test_bad_step_and_output_are_refused(trained_run, tmp_path, capsys):
    for step, words in (("7", ["step7", "no such checkpoint", "step20, step40"]),
                        ("avg:3", ["needs 3 complete tags", "step20, step40"]),
                        ("best", ["no best.json", "train.valid_interval"]),
                        ("newest", ["--step must be"])):
        assert export(trained_run, tmp_path / "x", "--step", step) == 2
        err = capsys.readouterr().err
        assert all(w in err for w in words), err
        assert not (tmp_path / "x").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    assert export(trained_run, tmp_path / "full") == 2
    assert "not an empty directory" in capsys.readouterr().err


@pytest.mark.distributed
def test_export_from_a_killed_run(data_bin, tmp_path, capsys):
    """Rank 1 killed while saving step4: no end-of-run export, step2 complete, step4 without its
    marker. `last` exports step2; step4 is refused as incomplete, naming it."""
    from test_faults import train

    run = tmp_path / "run"
    p = train(2, train_args(data_bin, run, "zero2.json", "train.max_steps=4", "train.save_interval=2"),
              env={"MASSIVE_MT_FAULT_KILL_IN_SAVE": "1:4"})
    assert p.returncode != 0 and not (run / "model").exists()
    assert (run / "checkpoints" / "step4").is_dir() and not (run / "checkpoints" / "step4" / MARKER).exists()
    assert export(run, tmp_path / "out") == 0
    assert json.loads((tmp_path / "out" / "massive_mt.json").read_text())["checkpoint"]["steps"] == [2]
    s2 = consolidate(run / "checkpoints" / "step2")
    assert all(torch.equal(v, s2[k]) for k, v in weights(tmp_path / "out").items())
    capsys.readouterr()
    assert export(run, tmp_path / "x", "--step", "4") == 2
    err = capsys.readouterr().err
    assert "step4: incomplete" in err and "step2" in err, err


@pytest.mark.distributed
@pytest.mark.parametrize("ds_config", ["zero0.json", "zero3.json"])
def test_other_zero_stages_consolidate_as_the_live_engine_gathers(data_bin, tmp_path, ds_config):
    run = tmp_path / "run"
    run_ranks(2, train_args(data_bin, run, ds_config, "train.max_steps=2", "train.save_interval=2"))
    assert json.loads((run / "checkpoints" / "step2" / MARKER).read_text())["run"]["world_size"] == 2
    assert export(run, tmp_path / "out") == 0
    a, b = weights(tmp_path / "out"), weights(run / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((tmp_path / "out" / "massive_mt.json").read_text())
    assert meta["config"]["data"]["langs"] == TEST_LANGS and meta["checkpoint"]["steps"] == [2]
