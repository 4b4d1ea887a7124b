"""Starting from a pretrained M2M-100 or NLLB-200 checkpoint: its tokenizer in prepare, training and
evaluation, the refusal of a data-bin from another tokenizer, and languages the checkpoint lacks.

The checkpoints are built here, tiny: a SentencePiece model trained on a few hundred lines of the
real corpus, the transformers tokenizer classes' own save_pretrained, a small M2M100 model."""
import itertools
import json

import numpy as np
import pytest
import sentencepiece as spm
import torch

from conftest import TEST_LANGS, read_metrics, run_ranks, train_args
from massive_mt.cli import main as cli_main
from massive_mt.data import language_codes
from massive_mt.data.binarize import load_data_bin
from massive_mt.data.corpus import load_corpus
from massive_mt.data.indexed import IndexedTokens
from massive_mt.data.tokenizers import HFTokenizer, check_pretrained, load_tokenizer
from massive_mt.errors import ConfigError, DataError
from massive_mt.engine.model import add_language_embeddings

LANGS = ["en", *TEST_LANGS]


def _new_language(corpus) -> str:
    """A language of the real corpus that M2M-100 lacks (and NLLB-200 has, for the two families' tests)."""
    langs = sorted({lang for p in corpus.pairs.values() for lang in (p.src, p.tgt)})
    lacking = [lang for lang in langs if language_codes.m2m100_code(lang) is None
               and language_codes.nllb_code(lang) is not None]
    assert lacking, f"the test corpus has no language M2M-100 lacks: {langs}"
    return lacking[0]


@pytest.fixture(scope="module")
def sp_model(real_corpus, tmp_path_factory):
    """A BPE SentencePiece model (spm's own ids: unk 0, bos 1, eos 2) on 150 train lines per language."""
    corpus = load_corpus(real_corpus)
    new = _new_language(corpus)
    lines = []
    for lang in [*LANGS, new]:
        name = next(n for n, p in sorted(corpus.pairs.items()) if lang in (p.src, p.tgt))
        with open(real_corpus / f"train.{name}.{lang}", encoding="utf-8") as f:
            lines += [line.strip() for line in itertools.islice(f, 150)]
    d = tmp_path_factory.mktemp("sp")
    (d / "text.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(d / "text.txt"), model_prefix=str(d / "sp"), vocab_size=400,
                                   model_type="bpe", hard_vocab_limit=False, minloglevel=2)
    return d / "sp.model"


def _save_model(directory, vocab_size: int) -> None:
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    torch.manual_seed(0)
    config = M2M100Config(vocab_size=vocab_size, d_model=16, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                          decoder_ffn_dim=32, max_position_embeddings=64, dropout=0.0, pad_token_id=1,
                          bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, tie_word_embeddings=True)
    M2M100ForConditionalGeneration(config).save_pretrained(str(directory))


@pytest.fixture(scope="module")
def m2m100_ckpt(sp_model, tmp_path_factory):
    """M2M-100-shaped: vocab.json (fairseq dictionary over the SentencePiece pieces) + sentencepiece.bpe.model."""
    from transformers import M2M100Tokenizer

    d = tmp_path_factory.mktemp("m2m100")
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for i in range(sp.get_piece_size()):
        vocab.setdefault(sp.id_to_piece(i), len(vocab))
    (d / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    M2M100Tokenizer(vocab_file=str(d / "vocab.json"), spm_file=str(sp_model)).save_pretrained(str(d))
    _save_model(d, HFTokenizer(d).vocab_size)
    return d


@pytest.fixture(scope="module")
def nllb_spm_only(sp_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("nllb-spm")
    (d / "sentencepiece.bpe.model").write_bytes(sp_model.read_bytes())
    return d


@pytest.fixture(scope="module")
def nllb_ckpt(nllb_spm_only, tmp_path_factory):
    """NLLB-shaped: tokenizer.json with the 202 language codes, the model 2 rows larger than the
    tokenizer's ids (rows beyond the ids are accepted when the tokenizer is the same)."""
    d = tmp_path_factory.mktemp("nllb")
    tok = HFTokenizer(nllb_spm_only)
    tok.hf.save_pretrained(str(d))
    _save_model(d, HFTokenizer(d).vocab_size + 2)
    return d


def _prepare(corpus, ckpt, out, *extra):
    assert cli_main(["prepare", "--corpus", str(corpus), "--out", str(out), "--tokenizer", str(ckpt),
                     "--langs", ",".join(TEST_LANGS), "--workers", "2", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def m2m100_bin(real_corpus, m2m100_ckpt, tmp_path_factory):
    return _prepare(real_corpus, m2m100_ckpt, tmp_path_factory.mktemp("bin") / "m2m100")


@pytest.fixture(scope="module")
def nllb_bin(real_corpus, nllb_ckpt, tmp_path_factory):
    return _prepare(real_corpus, nllb_ckpt, tmp_path_factory.mktemp("bin") / "nllb")


@pytest.fixture(scope="module")
def added_bin(real_corpus, m2m100_ckpt, tmp_path_factory):
    new = _new_language(load_corpus(real_corpus))
    out = tmp_path_factory.mktemp("bin") / "added"
    assert cli_main(["prepare", "--corpus", str(real_corpus), "--out", str(out), "--tokenizer", str(m2m100_ckpt),
                     "--langs", f"de,fr,{new}", "--add-languages", new, "--init-from", f"{new}=fr",
                     "--workers", "1"]) == 0
    return out


# ----------------------------------------------------------------------------- the two traps


def test_m2m100_vocabulary_is_sized_from_the_ids(m2m100_ckpt):
    tok = HFTokenizer(m2m100_ckpt)
    hf = tok.hf
    fr = hf.convert_tokens_to_ids("__fr__")
    assert fr >= len(hf) and "__fr__" not in hf.get_vocab()           # the trap: len() leaves them out
    assert tok.lang_id("fr") == fr and tok.vocab_size > max(tok.model_lang_ids.values()) >= len(hf)
    assert tok.family == "m2m100" and (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    # an added language goes after the last id, not onto __af__ (which add_tokens would give it)
    first_lang = hf.convert_tokens_to_ids("__af__")
    new = tok.add_languages(["xx"])["xx"]
    assert new == max(tok.model_lang_ids.values()) + 1 + hf.num_madeup_words and new != first_lang
    assert tok.lang_id("xx") == new and tok.decode([new, *tok.encode("Passwort")]) == "Passwort"


def test_nllb_from_sentencepiece_alone_gets_its_language_codes(nllb_spm_only):
    from transformers import NllbTokenizer

    raw = NllbTokenizer.from_pretrained(str(nllb_spm_only), local_files_only=True)
    assert raw.convert_tokens_to_ids("fra_Latn") == raw.unk_token_id          # the trap, without a word
    tok = HFTokenizer(nllb_spm_only)
    assert tok.registered_codes and tok.family == "nllb"
    ids = {lang: tok.lang_id(lang) for lang in LANGS}
    assert len(set(ids.values())) == len(LANGS) and tok.unk_id not in ids.values()
    assert tok.hf.convert_ids_to_tokens(ids["fr"]) == "fra_Latn"
    assert len(tok.model_lang_ids) == len(language_codes.NLLB200)
    # numbered as NLLB numbers them: the pieces (shifted by one for fairseq's 4 specials), the codes
    # in NLLB's order, then <mask>
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES
    first = spm.SentencePieceProcessor(model_file=str(nllb_spm_only / "sentencepiece.bpe.model")).get_piece_size() + 1
    assert tok.lang_id("fr") == first + FAIRSEQ_LANGUAGE_CODES.index("fra_Latn")
    assert tok.hf.mask_token_id == first + len(FAIRSEQ_LANGUAGE_CODES) == tok.vocab_size - 1


# ----------------------------------------------------------------------------- prepare --tokenizer


@pytest.mark.slow
@pytest.mark.parametrize("family", ["m2m100", "nllb"])
def test_prepare_encodes_as_the_checkpoints_tokenizer(family, real_corpus, request):
    from transformers import AutoTokenizer

    ckpt, data_bin = (request.getfixturevalue(f"{family}_ckpt"), request.getfixturevalue(f"{family}_bin"))
    manifest = load_data_bin(data_bin)
    info = manifest["tokenizer"]
    assert info["family"] == family and info["kind"] == "hf"
    assert info["source_sha256"] == info["sha256"] == HFTokenizer(ckpt).identity()
    assert sorted(manifest["langs"]) == sorted(LANGS)                       # --langs and the pivot
    assert manifest["vocab_size"] == HFTokenizer(ckpt).vocab_size
    hf = AutoTokenizer.from_pretrained(str(ckpt), local_files_only=True)    # plain transformers
    rng = np.random.default_rng(0)
    for lang in TEST_LANGS:
        code = language_codes.model_code(lang, family)
        hf.src_lang = code
        texts = (real_corpus / f"train.en-{lang}.{lang}").read_text(encoding="utf-8").splitlines()
        data = IndexedTokens(data_bin / f"train.en-{lang}.{lang}", manifest["dtype"], manifest["vocab_size"])
        assert len(data) == len(texts)
        for i in rng.choice(len(texts), size=20, replace=False):
            expected = hf(texts[i]).input_ids                               # [lang token] + tokens + [</s>]
            assert [manifest["lang_ids"][lang], *data[int(i)].tolist(), manifest["special_ids"]["eos"]] == expected


def test_prepare_refuses_languages_the_checkpoint_lacks(real_corpus, m2m100_ckpt, tmp_path, capsys):
    new = _new_language(load_corpus(real_corpus))
    code = cli_main(["prepare", "--corpus", str(real_corpus), "--out", str(tmp_path / "out"),
                     "--tokenizer", str(m2m100_ckpt), "--langs", f"fr,{new}"])
    assert code == 2 and not (tmp_path / "out").exists()
    assert f"have no m2m100 code: {new}" in capsys.readouterr().err


# ----------------------------------------------------------------------------- refusing a mismatch


@pytest.mark.slow
def test_a_data_bin_of_another_tokenizer_is_refused(nllb_bin, m2m100_ckpt, m2m100_bin, tmp_path):
    with pytest.raises(ConfigError, match=r"field 'model.from_pretrained'.*field 'data.data_bin'"):
        check_pretrained(load_data_bin(nllb_bin), nllb_bin, m2m100_ckpt)
    assert check_pretrained(load_data_bin(m2m100_bin), m2m100_bin, m2m100_ckpt)["init"] == {}
    # and through the trainer, as a one-line error and exit status 2
    p = run_ranks(1, train_args(nllb_bin, tmp_path / "run", "zero2.json", f"model.from_pretrained={m2m100_ckpt}",
                                "train.max_steps=1"), check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "field 'model.from_pretrained'" in out and "field 'data.data_bin'" in out, out[-3000:]
    assert str(m2m100_ckpt) in out and str(nllb_bin) in out


def test_a_checkpoint_without_tokenizer_files_is_refused(m2m100_bin, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="field 'model.from_pretrained': .* has no tokenizer files"):
        check_pretrained(load_data_bin(m2m100_bin), m2m100_bin, tmp_path)


# ----------------------------------------------------------------------------- training


def _train_gradvac(data_bin, ckpt, out, langs, steps: int = 4):
    run_ranks(2, train_args(data_bin, out, "zero2.json", f"model.from_pretrained={ckpt}", f"train.max_steps={steps}",
                            "reconcile.method=gradvac", f"data.langs={json.dumps(langs)}"))
    metrics = read_metrics(out)
    assert metrics[0]["event"] == "start" and metrics[0]["world_size"] == 2 and metrics[0]["zero_stage"] == 2
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert losses and all(np.isfinite(losses)), losses
    return metrics


@pytest.mark.distributed
def test_gradvac_zero2_trains_from_the_nllb_checkpoint(nllb_bin, nllb_ckpt, tmp_path):
    _train_gradvac(nllb_bin, nllb_ckpt, tmp_path / "run", TEST_LANGS)
    export = tmp_path / "run" / "model"
    tok = load_tokenizer(export)                                  # the checkpoint's tokenizer travels with it
    assert tok.kind == "hf" and tok.identity() == HFTokenizer(nllb_ckpt).identity()
    assert check_pretrained(load_data_bin(nllb_bin), nllb_bin, export)["init"] == {}
    # evaluation reads the export through the same interface: NLLB's language tokens, forced target
    from massive_mt.evaluation.decoding import Translator

    tr = Translator(export, device="cpu")
    src = tr.encode(["Passwort vergessen?"], "de")[0]
    assert src[0] == tok.hf.convert_tokens_to_ids("deu_Latn") and src[-1] == tok.eos_id
    assert src[1:-1] == HFTokenizer(nllb_ckpt).hf("Passwort vergessen?", add_special_tokens=False).input_ids
    sentences = ["Passwort vergessen?", "Konto löschen"]
    ours = tr.translate(sentences, "de", "fr", beam=2, max_new_tokens=8)
    assert all(isinstance(h, str) for h in ours)
    # plain transformers on the export: AutoTokenizer with NLLB's language codes, generate with the
    # target code forced, gives evaluate's and translate's text
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(str(export), src_lang="deu_Latn")
    model = AutoModelForSeq2SeqLM.from_pretrained(str(export)).eval()
    theirs = []
    for text in sentences:
        batch = hf_tok(text, return_tensors="pt")
        assert batch["input_ids"][0].tolist() == tr.encode([text], "de")[0]
        gen = model.generate(**batch, forced_bos_token_id=hf_tok.convert_tokens_to_ids("fra_Latn"), num_beams=2,
                             max_new_tokens=8)
        theirs.append(hf_tok.decode(gen[0], skip_special_tokens=True))
    assert theirs == ours
    # a resume of a run started from the checkpoint continues it (the tokenizer check passes again)
    metrics = _train_gradvac(nllb_bin, nllb_ckpt, tmp_path / "run", TEST_LANGS, steps=6)
    starts = [m for m in metrics if m.get("event") == "start"]
    assert [m["resumed_from_step"] for m in starts] == [0, 4] and metrics[-1]["step"] == 6


@pytest.mark.distributed
def test_an_added_language_starts_from_its_related_language_and_trains(added_bin, m2m100_ckpt, real_corpus, tmp_path):
    from transformers import M2M100ForConditionalGeneration

    new = _new_language(load_corpus(real_corpus))
    manifest = load_data_bin(added_bin)
    info = manifest["tokenizer"]
    new_id = info["added_languages"][new]["id"]
    assert info["added_languages"][new]["init_from"] == "fr" and manifest["lang_ids"][new] == new_id
    assert new_id == info["source_vocab_size"] and manifest["vocab_size"] == new_id + 1
    assert info["sha256"] != info["source_sha256"] == HFTokenizer(m2m100_ckpt).identity()
    assert load_tokenizer(added_bin).lang_id(new) == new_id                # the data-bin's copy holds the token
    with pytest.raises(DataError):
        HFTokenizer(m2m100_ckpt).lang_id(new)

    start = check_pretrained(manifest, added_bin, m2m100_ckpt)
    assert start == {"vocab_size": new_id, "init": {new_id: [manifest["lang_ids"]["fr"]]}}
    model = M2M100ForConditionalGeneration.from_pretrained(str(m2m100_ckpt), local_files_only=True)
    add_language_embeddings(model, manifest["vocab_size"], start["init"])
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == manifest["vocab_size"] and model.get_output_embeddings().weight.shape[0] == emb.shape[0]
    assert torch.equal(emb[new_id], emb[manifest["lang_ids"]["fr"]])

    out = tmp_path / "run"
    metrics = _train_gradvac(added_bin, m2m100_ckpt, out, ["fr", new])
    assert f"en-{new}" in metrics[0]["tasks"]
    meta = json.loads((out / "model" / "massive_mt.json").read_text())
    assert meta["tokenizer"]["added_languages"][new]["id"] == new_id
    # continuing from the run's export: its tokenizer is the data-bin's copy, nothing re-initialised
    assert check_pretrained(manifest, added_bin, out / "model") == {"vocab_size": new_id + 1, "init": {}}
