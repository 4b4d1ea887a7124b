import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from massive_mt.data.corpus import (
    Corpus,
    canonical_lang,
    is_english,
    load_corpus,
    read_lines,
    read_parallel,
    write_manifest,
    write_parallel,
)
from massive_mt.data.tasks import resolve_tasks
from massive_mt.errors import ConfigError, DataError

# --------------------------------------------------------------------------------------
# canonical_lang
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, expected",
    [
        ("fr", "fr"),
        ("FR", "fr"),
        ("pt-br", "pt_BR"),
        ("pt_br", "pt_BR"),
        ("pt_BR", "pt_BR"),
        ("zh-hans", "zh_Hans"),
        ("zh_HANT", "zh_Hant"),
        ("sr@latin", "sr_Latn"),
        ("sr_RS@latin", "sr_Latn_RS"),
        ("sr_Latn", "sr_Latn"),
        ("zh_CN", "zh_Hans"),
        ("zh-tw", "zh_Hant"),
        ("zh_TW.Big5", "zh_Hant"),
        ("no", "nb"),
        ("nb_NO", "nb_NO"),
        ("de_DE.UTF-8", "de_DE"),
        ("de_DE@euro", "de_DE"),
        ("iw", "he"),
        ("in", "id"),
        ("es_419", "es_419"),
        ("ast", "ast"),
        (" en_GB ", "en_GB"),
    ],
)
def test_canonical_lang(code, expected):
    assert canonical_lang(code) == expected
    assert canonical_lang(expected) == expected


@pytest.mark.parametrize("code", ["", "x", "english", "e1", "pt_BRA", "zh_Hans_Hant", "ca@valencia", "d e"])
def test_canonical_lang_rejects(code):
    with pytest.raises(DataError, match="invalid language code"):
        canonical_lang(code)


@given(
    st.sampled_from(["EN", "pt", "zh", "sr", "ast", "no", "iw"]),
    st.sampled_from(["", "-hans", "_LATN", "_cyrl"]),
    st.sampled_from(["", "_br", "-TW", "_419", "_cn"]),
    st.sampled_from(["", ".UTF-8"]),
)
def test_canonical_lang_is_idempotent(lang, script, region, enc):
    code = canonical_lang(lang + script + region + enc)
    assert canonical_lang(code) == code


def test_is_english():
    assert is_english("en") and is_english("en_GB") and is_english("en-au")
    assert not is_english("fr")


# --------------------------------------------------------------------------------------
# read_parallel / write_parallel
# --------------------------------------------------------------------------------------


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_read_parallel(tmp_path):
    src = _write(tmp_path / "a.en", b"Hello\nGood  bye \r\nwith\xe2\x80\xa8separator")
    tgt = _write(tmp_path / "a.fr", "Bonjour\nAu revoir \navec séparateur\n".encode())
    assert read_parallel(src, tgt) == [
        ("Hello", "Bonjour"),
        ("Good  bye ", "Au revoir "),  # only the line terminator is stripped
        ("with\u2028separator", "avec séparateur"),  # U+2028 is content, not a line break
    ]


def test_read_lines_streams_numbered_sentences(tmp_path):
    path = _write(tmp_path / "a.en", "\ufeffHello\r\nsecond\nthird".encode())
    assert list(read_lines(path)) == [(1, "Hello"), (2, "second"), (3, "third")]  # byte-order mark dropped
    assert list(read_lines(_write(tmp_path / "b.en", b""))) == []
    (tmp_path / "a.fr").mkdir()
    with pytest.raises(DataError, match=r"a\.fr: is a directory"):
        list(read_lines(tmp_path / "a.fr"))


def test_read_parallel_missing_file(tmp_path):
    src = _write(tmp_path / "a.en", b"x\n")
    with pytest.raises(DataError, match=r"a\.fr: file not found"):
        read_parallel(src, tmp_path / "a.fr")


def test_read_parallel_empty_file(tmp_path):
    src = _write(tmp_path / "a.en", b"")
    tgt = _write(tmp_path / "a.fr", b"x\n")
    with pytest.raises(DataError, match=r"a\.en: file is empty"):
        read_parallel(src, tgt)


def test_read_parallel_invalid_utf8_names_line(tmp_path):
    src = _write(tmp_path / "a.en", b"one\ntwo\nthr\xffee\n")
    tgt = _write(tmp_path / "a.fr", b"un\ndeux\ntrois\n")
    with pytest.raises(DataError) as err:
        read_parallel(src, tgt)
    assert str(src) in str(err.value) and "invalid UTF-8" in str(err.value) and "line 3" in str(err.value)


def test_read_parallel_line_count_mismatch(tmp_path):
    src = _write(tmp_path / "a.en", b"one\ntwo\nthree\n")
    tgt = _write(tmp_path / "a.fr", b"un\ndeux\n")
    with pytest.raises(DataError) as err:
        read_parallel(src, tgt)
    msg = str(err.value)
    assert str(src) in msg and str(tgt) in msg and "3" in msg and "2" in msg and "mismatch" in msg


def test_read_parallel_empty_line(tmp_path):
    src = _write(tmp_path / "a.en", b"one\ntwo\nthree\n")
    tgt = _write(tmp_path / "a.fr", b"un\n  \ntrois\n")
    with pytest.raises(DataError, match=rf"{tmp_path / 'a.fr'}:2: empty line 2"):
        read_parallel(src, tgt)


def test_write_parallel_round_trip_and_no_temp_files(tmp_path):
    pairs = [("Hello", "Bonjour"), ("Good bye", "Au revoir")]
    paths = write_parallel(tmp_path, "train", "en", "fr", pairs)
    assert [p.name for p in paths] == ["train.en-fr.en", "train.en-fr.fr"]
    assert read_parallel(*paths) == pairs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.en-fr.en", "train.en-fr.fr"]


def test_write_parallel_failure_leaves_old_files(tmp_path):
    write_parallel(tmp_path, "train", "en", "fr", [("old", "vieux")])

    def pairs():
        yield ("new", "nouveau")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_parallel(tmp_path, "train", "en", "fr", pairs())
    with pytest.raises(DataError, match="single-line"):
        write_parallel(tmp_path, "train", "en", "fr", [("a\nb", "c")])
    assert read_parallel(tmp_path / "train.en-fr.en", tmp_path / "train.en-fr.fr") == [("old", "vieux")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.en-fr.en", "train.en-fr.fr"]


@pytest.mark.parametrize(
    "args, message",
    [
        (("dev", "en", "fr"), "unknown split"),
        (("train", "en", "pt-br"), "not canonical"),
        (("train", "en", "xx-yy-zz"), "invalid language code"),
        (("train", "en", "en"), "same"),
    ],
)
def test_write_parallel_rejects(tmp_path, args, message):
    with pytest.raises(DataError, match=message):
        write_parallel(tmp_path, *args, [("a", "b")])


def test_write_parallel_rejects_empty(tmp_path):
    with pytest.raises(DataError, match="no sentence pairs"):
        write_parallel(tmp_path, "train", "en", "fr", [])


# BOM excluded: a leading U+FEFF is read as a byte-order mark.
_sentence = st.text(st.characters(blacklist_characters="\n\r\ufeff", blacklist_categories=("Cs",)), min_size=1).filter(
    str.strip
)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(_sentence, _sentence), min_size=1, max_size=5))
def test_write_read_round_trip_property(tmp_path_factory, pairs):
    out = tmp_path_factory.mktemp("rt")
    assert read_parallel(*write_parallel(out, "valid", "en", "de", pairs)) == pairs


# --------------------------------------------------------------------------------------
# load_corpus
# --------------------------------------------------------------------------------------


def _make_corpus(root, manifest=True):
    write_parallel(root, "train", "en", "fr", [("a", "b"), ("c", "d"), ("e", "f")])
    write_parallel(root, "valid", "en", "fr", [("g", "h")])
    write_parallel(root, "train", "de", "en", [("Hallo", "Hello"), ("Welt", "World")])
    write_parallel(root, "test", "de", "en", [("Tschüss", "Bye")])
    if manifest:
        write_manifest(
            root,
            {
                "format": "massive_mt.corpus/1",
                "pivot": "en",
                "pairs": {
                    "en-fr": {"src": "en", "tgt": "fr", "train": 3, "valid": 1, "test": 0},
                    "de-en": {"src": "de", "tgt": "en", "train": 2, "valid": 0, "test": 1},
                },
                "sources": [{"name": "handmade", "license": "CC0"}],
            },
        )
    return root


@pytest.mark.parametrize("manifest", [True, False])
def test_load_corpus(tmp_path, manifest):
    corpus = load_corpus(_make_corpus(tmp_path, manifest))
    assert isinstance(corpus, Corpus) and corpus.root == tmp_path
    assert set(corpus.pairs) == {"en-fr", "de-en"}
    assert corpus.pairs["en-fr"].sizes == {"train": 3, "valid": 1, "test": 0}
    assert corpus.pairs["de-en"].sizes == {"train": 2, "valid": 0, "test": 1}
    assert corpus.path("train", "en-fr", "fr") == tmp_path / "train.en-fr.fr"
    assert corpus.sources == ([{"name": "handmade", "license": "CC0"}] if manifest else [])


def test_corpus_path_errors(tmp_path):
    corpus = load_corpus(_make_corpus(tmp_path))
    with pytest.raises(DataError, match="no pair 'en-es'"):
        corpus.path("train", "en-es", "es")
    with pytest.raises(DataError, match="no language 'de'"):
        corpus.path("train", "en-fr", "de")
    with pytest.raises(DataError, match="no 'test' split"):
        corpus.path("test", "en-fr", "fr")


def test_tasks_and_reversed_files(tmp_path):
    corpus = load_corpus(_make_corpus(tmp_path))
    manifest = {"pivot": corpus.pivot, "pairs": corpus.pairs_manifest()}
    assert corpus.pairs_manifest()["de-en"] == {"src": "de", "tgt": "en", "train": 2, "valid": 0, "test": 1}
    assert resolve_tasks(manifest, "one_to_many") == [("en", "de"), ("en", "fr")]
    assert resolve_tasks(manifest, "many_to_one") == [("de", "en"), ("fr", "en")]
    assert resolve_tasks(manifest, "many_to_many") == [("en", "de"), ("en", "fr"), ("de", "en"), ("fr", "en")]
    # The de-en files serve en->de, read reversed.
    assert corpus.task_files("train", "en", "de") == (tmp_path / "train.de-en.en", tmp_path / "train.de-en.de")
    assert corpus.read("train", "en", "de") == [("Hello", "Hallo"), ("World", "Welt")]
    assert corpus.read("train", "fr", "en")[0] == ("b", "a")
    with pytest.raises(ConfigError, match="data.direction"):
        resolve_tasks(manifest, "sideways")
    with pytest.raises(DataError, match="pivot language 'ja'"):
        resolve_tasks({**manifest, "pivot": "ja"}, "one_to_many")


def test_load_corpus_missing_dir_and_empty_dir(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_corpus(tmp_path / "nope")
    (tmp_path / "README").write_text("hi")
    with pytest.raises(DataError, match="no manifest.json"):
        load_corpus(tmp_path)


def test_scan_ignores_other_files(tmp_path):
    _make_corpus(tmp_path, manifest=False)
    for name in ("dict.en.txt", "train.en-fr.en.bin", "train.en", "spm.model"):
        (tmp_path / name).write_text("x")
    assert set(load_corpus(tmp_path).pairs) == {"en-fr", "de-en"}


def test_scan_missing_other_side(tmp_path):
    _make_corpus(tmp_path, manifest=False)
    os.remove(tmp_path / "valid.en-fr.fr")
    with pytest.raises(DataError, match=rf"{tmp_path / 'valid.en-fr.fr'}: file not found"):
        load_corpus(tmp_path)


def test_scan_line_count_mismatch(tmp_path):
    _make_corpus(tmp_path, manifest=False)
    (tmp_path / "train.en-fr.fr").write_text("b\nd\n")
    with pytest.raises(DataError, match=r"train\.en-fr\.en has 3 lines but .*train\.en-fr\.fr has 2"):
        load_corpus(tmp_path)


@pytest.mark.parametrize(
    "name, message",
    [
        ("train.en-pt_br.en", "not canonical"),
        ("train.en-english.en", "invalid language code"),
        ("train.en-pt-BR.en", "one '-'"),
        ("train.en-fr.de", "neither side"),
    ],
)
def test_scan_bad_file_names(tmp_path, name, message):
    (tmp_path / name).write_text("x\n")
    with pytest.raises(DataError) as err:
        load_corpus(tmp_path)
    assert str(tmp_path / name) in str(err.value) and message in str(err.value)


def _edit_manifest(root, edit):
    manifest = json.loads((root / "manifest.json").read_text())
    edit(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_manifest_size_mismatch(tmp_path):
    _make_corpus(tmp_path)
    _edit_manifest(tmp_path, lambda m: m["pairs"]["en-fr"].update(train=5))
    with pytest.raises(DataError) as err:
        load_corpus(tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "train.en-fr.en") in msg and "3 lines" in msg and "says 5" in msg
    assert load_corpus(tmp_path, verify=False).pairs["en-fr"].sizes["train"] == 5


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["pairs"]["en-fr"].update(test=4), "test.en-fr.en: file not found"),
        (lambda m: m["pairs"].pop("de-en"), ".de-en.de: not listed in"),
        (lambda m: m["pairs"].update({"en-pt_br": {"src": "en", "tgt": "pt_br", "train": 1}}), "not canonical"),
        (lambda m: m["pairs"]["en-fr"].update(tgt="es"), "name must be 'en-es'"),
        (lambda m: m["pairs"]["en-fr"].update(train=-1), "non-negative integer"),
        (lambda m: m.update(format="other/2"), "'format' must be"),
        (lambda m: m.update(pairs={}), "'pairs' must be a non-empty object"),
    ],
)
def test_manifest_inconsistent(tmp_path, edit, message):
    _make_corpus(tmp_path)
    _edit_manifest(tmp_path, edit)
    with pytest.raises(DataError) as err:
        load_corpus(tmp_path)
    assert "manifest.json" in str(err.value) or str(tmp_path) in str(err.value)
    assert message in str(err.value)


def test_manifest_invalid_json(tmp_path):
    _make_corpus(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match=r"manifest\.json: not valid JSON"):
        load_corpus(tmp_path)
