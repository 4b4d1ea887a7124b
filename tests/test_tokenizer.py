import json
import random
import shutil

import numpy as np
import pytest

from massive_mt.data.binarize import encode_corpus, load_data_bin
from massive_mt.data.corpus import load_corpus
from massive_mt.data.dataset import TaskDataset
from massive_mt.data.indexed import IndexedTokens
from massive_mt.data.spm import (
    EOS_ID,
    PAD_ID,
    Tokenizer,
    _sample_sizes,
    _train_files_by_lang,
    _unique_lines,
    lang_tag,
    train_spm,
)
from massive_mt.errors import ConfigError, DataError

WORDS = {
    "en": "the cat dog house tree river small big red green walks sees runs eats under over".split(),
    "fr": "le chat chien maison arbre rivière petit grand rouge vert marche voit court mange sous été".split(),
    "pt_BR": "o gato cão casa árvore rio pequeno grande vermelho verde anda vê corre come sob ação".split(),
}
N_TRAIN = {"en-fr": 200, "en-pt_BR": 150}


def _sentence(rng, lang, i):
    words = rng.choices(WORDS[lang], k=rng.randint(2, 9))
    if i % 37 == 0:
        words *= 8  # a few long sentences for the truncation tests
    return " ".join(words)


def write_corpus(root, n_train=N_TRAIN, n_valid=20):
    """English-centric corpus whose English side is shared by both pairs (as in real corpora)."""
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    english = [_sentence(rng, "en", i) for i in range(max(n_train.values()) + n_valid)]
    pairs = {}
    for tgt, n in (("fr", n_train["en-fr"]), ("pt_BR", n_train["en-pt_BR"])):
        name = f"en-{tgt}"
        for split, rows in (("train", range(n)), ("valid", range(n, n + n_valid))):
            (root / f"{split}.{name}.en").write_text("".join(english[i] + "\n" for i in rows), encoding="utf-8")
            (root / f"{split}.{name}.{tgt}").write_text(
                "".join(_sentence(rng, tgt, i) + "\n" for i in rows), encoding="utf-8"
            )
        pairs[name] = {"src": "en", "tgt": tgt, "train": n, "valid": n_valid, "test": 0}
    manifest = {"format": "massive_mt.corpus/1", "pivot": "en", "pairs": pairs}
    (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def spm_model(corpus, tmp_path_factory):
    return train_spm(corpus, tmp_path_factory.mktemp("spm") / "joint", vocab_size=120, extra_langs=("de",))


@pytest.fixture(scope="module")
def data_bin(corpus, spm_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bin") / "data-bin"
    encode_corpus(corpus, spm_model, out, workers=2)
    return out


# -- spm training and Tokenizer -------------------------------------------------------------


def test_lang_tag():
    assert lang_tag("fr") == "__fr__"
    assert lang_tag("pt_BR") == "__pt_BR__"
    with pytest.raises(ConfigError):
        lang_tag("pt-BR")


def test_pivot_sentences_counted_once_and_temperature_mix(corpus):
    files = _train_files_by_lang(load_corpus(corpus))
    assert len(files["en"]) == 2
    # en-pt_BR's English train lines are the first 150 of en-fr's: they are not counted again.
    en_fr = (corpus / "train.en-fr.en").read_text(encoding="utf-8").splitlines()
    assert list(_unique_lines(files["en"])) == list(dict.fromkeys(en_fr))
    take = _sample_sizes({"en": 1000, "fr": 100, "pt_BR": 10}, temperature=5.0, max_sentences=300)
    assert take["pt_BR"] == 10  # capped at its size
    assert take["en"] < 150  # flattened: far below its proportional 270
    assert _sample_sizes({"en": 1000, "fr": 100}, 1.0, 110) == {"en": 100, "fr": 10}


def test_tokenizer_conventions(spm_model):
    tok = Tokenizer(spm_model)
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert [tok.sp.id_to_piece(i) for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert tok.langs == ["de", "en", "fr", "pt_BR"]
    for lang in tok.langs:
        # A tag is a single id, also when it appears inside text.
        assert tok.sp.id_to_piece(tok.lang_id(lang)) == lang_tag(lang)
        assert tok.encode(lang_tag(lang)) == [tok.sp.piece_to_id("▁"), tok.lang_id(lang)]
    assert len(set(map(tok.lang_id, tok.langs))) == 4
    assert tok.vocab_size <= 120
    with pytest.raises(DataError, match=r"joint\.model.*'sw'"):
        tok.lang_id("sw")


def test_encode_decode_round_trip(spm_model):
    tok = Tokenizer(spm_model)
    for text in ["the cat sees the red house", "le chat voit la maison", "o gato come sob a árvore"]:
        ids = tok.encode(text)
        assert ids and 0 not in ids and 2 not in ids
        assert tok.decode(ids) == text
        # Specials and tags are dropped.
        assert tok.decode([tok.lang_id("fr"), *ids, tok.eos_id, tok.pad_id]) == text


def test_train_spm_is_deterministic(corpus, spm_model, tmp_path):
    again = train_spm(corpus, tmp_path / "again", vocab_size=120, extra_langs=("de",))
    a, b = Tokenizer(again).sp, Tokenizer(spm_model).sp  # the files embed temp paths: compare pieces
    assert a.get_piece_size() == b.get_piece_size()
    assert all(a.id_to_piece(i) == b.id_to_piece(i) for i in range(a.get_piece_size()))
    assert again.with_suffix(".vocab").is_file()


@pytest.mark.parametrize("kwargs", [{"vocab_size": 10}, {"model_type": "bogus"}, {"temperature": 0.0}])
def test_train_spm_bad_options(corpus, tmp_path, kwargs):
    with pytest.raises(ConfigError):
        train_spm(corpus, tmp_path / "x", **kwargs)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_bad_model_and_bad_manifest(tmp_path):
    with pytest.raises(DataError, match="missing.model"):
        Tokenizer(tmp_path / "missing.model")
    (tmp_path / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(DataError, match="manifest.json"):
        train_spm(tmp_path, tmp_path / "x")


# -- binarisation ---------------------------------------------------------------------------


def test_encode_corpus_writes_readable_memmaps(corpus, spm_model, data_bin):
    manifest = load_data_bin(data_bin)
    tok = Tokenizer(data_bin / "spm.model")
    assert manifest["dtype"] == "uint16" and manifest["vocab_size"] == tok.vocab_size
    assert manifest["langs"] == ["en", "fr", "pt_BR"]
    assert manifest["lang_ids"]["fr"] == tok.lang_id("fr")
    assert set(manifest["pairs"]) == {"en-fr", "en-pt_BR"}
    assert (data_bin / "spm.vocab").is_file()
    assert len(manifest["files"]) == 8  # 2 pairs x (train, valid) x 2 sides; test has 0 lines
    for name, stats in manifest["files"].items():
        lines = (corpus / name).read_text(encoding="utf-8").splitlines()
        data = IndexedTokens(data_bin / name, manifest["dtype"])
        assert len(data) == stats["sentences"] == len(lines)
        assert int(data.sizes.sum()) == stats["tokens"]
        assert data.sizes.dtype == np.int64
        for i in (0, len(lines) // 2, len(lines) - 1):
            assert data[i].tolist() == tok.encode(lines[i])
    assert not list(data_bin.glob("*.tmp"))


def test_encode_corpus_single_worker_matches_parallel(corpus, spm_model, data_bin, tmp_path):
    encode_corpus(corpus, spm_model, tmp_path, splits=("valid",), workers=1)
    for name in ("valid.en-fr.fr", "valid.en-pt_BR.pt_BR"):
        assert (tmp_path / f"{name}.bin").read_bytes() == (data_bin / f"{name}.bin").read_bytes()


def test_empty_line_names_file_and_line(corpus, spm_model, tmp_path):
    bad = tmp_path / "corpus"
    shutil.copytree(corpus, bad)
    path = bad / "valid.en-fr.fr"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[4] = "  "
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"valid\.en-fr\.fr:5: empty line"):
        encode_corpus(bad, spm_model, tmp_path / "out", splits=("valid",), workers=1)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_line_count_mismatch_is_reported(corpus, spm_model, tmp_path):
    bad = tmp_path / "corpus"
    shutil.copytree(corpus, bad)
    with open(bad / "valid.en-fr.fr", "a", encoding="utf-8") as f:
        f.write("une phrase de trop\n")
    with pytest.raises(DataError, match=r"valid\.en-fr\.fr: has 21 lines but .*manifest\.json says 20"):
        encode_corpus(bad, spm_model, tmp_path / "out", splits=("valid",), workers=1)


def test_corrupt_index_names_the_file(data_bin, tmp_path):
    for suffix in (".bin", ".idx.npy"):
        shutil.copy(data_bin / f"valid.en-fr.fr{suffix}", tmp_path / f"x{suffix}")
    offsets = np.load(tmp_path / "x.idx.npy")
    offsets[-1] += 3
    np.save(tmp_path / "x.idx.npy", offsets)
    with pytest.raises(DataError, match=r"x\.bin.*x\.idx\.npy"):
        IndexedTokens(tmp_path / "x")
    (tmp_path / "x.idx.npy").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"x\.idx\.npy"):
        IndexedTokens(tmp_path / "x")
    (tmp_path / "x.idx.npy").unlink()
    with pytest.raises(DataError, match=r"x\.idx\.npy: not found"):
        IndexedTokens(tmp_path / "x")


def test_out_of_range_token_ids_name_the_file(data_bin, tmp_path):
    bad = tmp_path / "data-bin"
    shutil.copytree(data_bin, bad)
    manifest = load_data_bin(bad)
    path = bad / "train.en-fr.fr.bin"
    tokens = np.fromfile(path, dtype=manifest["dtype"])
    data = IndexedTokens(bad / "train.en-fr.fr", manifest["dtype"])
    tokens[int(data.offsets[6]) + 1] = manifest["vocab_size"] + 7  # sentence 7, its second token
    tokens.tofile(path)
    with pytest.raises(DataError, match=rf"train\.en-fr\.fr\.bin: token id {manifest['vocab_size'] + 7} "
                                         rf"in sentence 7 .*vocabulary of {manifest['vocab_size']}"):
        TaskDataset(bad, "en", "fr", max_len=64)
    TaskDataset(bad, "en", "pt_BR", max_len=64)  # the other files are fine


def test_empty_valid_file_is_an_error(corpus, spm_model, tmp_path):
    """Empty files are errors (docs/data.md), also for a split the training may not read."""
    bad = tmp_path / "corpus"
    shutil.copytree(corpus, bad)
    (bad / "manifest.json").unlink()  # scanned: an empty file must not pass as an absent split
    for lang in ("en", "fr"):
        (bad / f"valid.en-fr.{lang}").write_bytes(b"")
    with pytest.raises(DataError, match=r"valid\.en-fr\.en: file is empty"):
        load_corpus(bad)
    with pytest.raises(DataError, match=r"valid\.en-fr\.en: file is empty"):
        encode_corpus(bad, spm_model, tmp_path / "out", workers=1)
    (bad / "valid.en-fr.en").write_text("the cat\n", encoding="utf-8")  # one side empty
    with pytest.raises(DataError, match=r"valid\.en-fr\.fr: file is empty"):
        load_corpus(bad)


def test_load_data_bin_errors(data_bin, tmp_path):
    with pytest.raises(DataError, match="manifest.json: not found"):
        load_data_bin(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="manifest.json"):
        load_data_bin(tmp_path)
    manifest = json.loads((data_bin / "manifest.json").read_text())
    del manifest["dtype"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="dtype"):
        load_data_bin(tmp_path)


# -- TaskDataset ----------------------------------------------------------------------------


@pytest.mark.parametrize("src,tgt", [("en", "fr"), ("fr", "en")])
def test_collate_m2m100_format(data_bin, src, tgt):
    ds = TaskDataset(data_bin, src, tgt, split="valid", max_len=64)
    tok = Tokenizer(data_bin / "spm.model")
    assert (ds.src_tag, ds.tgt_tag) == (tok.lang_id(src), tok.lang_id(tgt))
    idx = [3, 0, 7]
    batch = ds.collate(np.array(idx))
    ids, mask, labels, dec = (batch[k] for k in ("input_ids", "attention_mask", "labels", "decoder_input_ids"))
    assert ids.dtype == labels.dtype == dec.dtype == mask.dtype and str(ids.dtype) == "torch.int64"
    assert ids.shape == mask.shape and labels.shape == dec.shape and ids.shape[0] == 3
    for row, i in enumerate(idx):
        s, t = ds.src[i].tolist(), ds.tgt[i].tolist()
        n_s, n_t = len(s) + 2, len(t) + 2
        assert ids[row, :n_s].tolist() == [ds.src_tag, *s, EOS_ID]
        assert (ids[row, n_s:] == PAD_ID).all()
        assert mask[row].tolist() == [1] * n_s + [0] * (ids.shape[1] - n_s)
        assert labels[row, :n_t].tolist() == [ds.tgt_tag, *t, EOS_ID]
        assert (labels[row, n_t:] == PAD_ID).all()  # pad, not -100
        assert dec[row].tolist() == [EOS_ID, *labels[row, :-1].tolist()]
        assert n_s == ds.sizes_src[i] and n_t == ds.sizes_tgt[i]
    assert batch["n_tokens"] == int((labels != PAD_ID).sum()) == int(ds.sizes_tgt[idx].sum())
    assert batch["n_sentences"] == 3
    assert ids.shape[1] == max(ds.sizes_src[idx]) and labels.shape[1] == max(ds.sizes_tgt[idx])


def test_truncation_is_counted(data_bin):
    # Sentence 0 of every split is long (see _sentence).
    ds = TaskDataset(data_bin, "en", "pt_BR", max_len=16)
    assert ds.max_len == 16
    raw_src, raw_tgt = ds.src.sizes + 2, ds.tgt.sizes + 2
    assert ds.n_truncated == int(np.count_nonzero((raw_src > 16) | (raw_tgt > 16))) > 0
    assert ds.n_truncated_src == int(np.count_nonzero(raw_src > 16))
    assert ds.sizes_src.max() <= 16 and ds.sizes_tgt.max() <= 16
    long = int(np.argmax(raw_src))
    batch = ds.collate([long])
    assert batch["input_ids"].shape[1] == 16
    assert batch["input_ids"][0, -1] == EOS_ID
    assert batch["input_ids"][0, 1:15].tolist() == ds.src[long][:14].tolist()
    assert TaskDataset(data_bin, "en", "pt_BR", max_len=10_000).n_truncated == 0


def test_task_dataset_errors(data_bin):
    with pytest.raises(DataError, match=r"manifest\.json: no pair serves the direction fr->pt_BR"):
        TaskDataset(data_bin, "fr", "pt_BR", max_len=16)
    with pytest.raises(DataError, match="test"):
        TaskDataset(data_bin, "en", "fr", split="test", max_len=16)
    with pytest.raises(ConfigError, match="max_len"):
        TaskDataset(data_bin, "en", "fr", max_len=2)


# -- the tokenizer interface on the project's SentencePiece model ----------------------------


def test_data_bin_records_and_loads_its_sentencepiece_tokenizer(spm_model, data_bin):
    from massive_mt.data.tokenizers import load_tokenizer

    tok = load_tokenizer(data_bin)
    assert isinstance(tok, Tokenizer) and tok.kind == "spm" and tok.files() == [data_bin / "spm.model"]
    info = load_data_bin(data_bin)["tokenizer"]
    assert info["sha256"] == info["source_sha256"] == Tokenizer(spm_model).identity() == tok.identity()
    assert info["family"] is None and info["source_vocab_size"] == tok.vocab_size
    assert load_tokenizer(spm_model).encode("le chat") == tok.encode("le chat")


def test_langs_keeps_their_pairs_with_the_pivot(corpus, spm_model, tmp_path):
    encode_corpus(corpus, spm_model, tmp_path / "fr", splits=("valid",), workers=1, langs=["fr"])
    manifest = load_data_bin(tmp_path / "fr")
    assert list(manifest["pairs"]) == ["en-fr"] and manifest["langs"] == ["en", "fr"]
    with pytest.raises(DataError, match="--langs: xx not in the corpus"):
        encode_corpus(corpus, spm_model, tmp_path / "xx", splits=("valid",), workers=1, langs=["fr", "xx"])
    with pytest.raises(ConfigError, match="--add-languages needs --tokenizer"):
        encode_corpus(corpus, spm_model, tmp_path / "add", splits=("valid",), workers=1, add_languages=["de"])
