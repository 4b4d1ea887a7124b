import json
import subprocess
import zipfile

import polib
import pytest

from massive_mt.data import catalogs
from massive_mt.data.candidates import Candidate, catalog_language, entry_candidates, filter_pairs, first_failing_rule, is_format_only, length_ratio_ok, normalize, normalize_whitespace, split_of, strip_accelerators
from massive_mt.data.wheels import download_wheels
from massive_mt.data.catalogs import build_catalog_corpus, catalog_members, extract_wheel
from massive_mt.data.corpus import SPLITS, load_corpus, read_parallel
from massive_mt.data.tasks import resolve_tasks
from massive_mt.errors import DataError

# A French catalogue with one entry for each filtering rule (comments say which).
FR_PO = r'''
msgid ""
msgstr ""
"Content-Type: text/plain; charset=UTF-8\n"
"Plural-Forms: nplurals=2; plural=(n > 1);\n"

msgid "Hello world"
msgstr "Bonjour le monde"

# duplicate once whitespace is normalised
msgid "Hello   world"
msgstr "Bonjour  le monde"

#, fuzzy
msgid "Fuzzy thing"
msgstr "Chose floue"

msgid "Untranslated thing"
msgstr ""

# identical
msgid "Python"
msgstr "Python"

# format only
msgid "%(name)s: <b>{0}</b> &amp; %d"
msgstr "%(name)s : <b>{0}</b> &amp; %d"

# extreme length ratio
msgid "Yes"
msgstr "Oui, absolument, sans le moindre doute possible"

# accelerator
msgid "_Open file"
msgstr "_Ouvrir le fichier"

msgid "%(count)d apple"
msgid_plural "%(count)d apples"
msgstr[0] "%(count)d pomme"
msgstr[1] "%(count)d pommes"

msgid ""
"A long message\n"
"on two lines"
msgstr ""
"Un long message\n"
"sur deux lignes"

#~ msgid "Old thing"
#~ msgstr "Vieille chose"
'''

FR_KEPT = [
    ("%(count)d apple", "%(count)d pomme"),
    ("%(count)d apples", "%(count)d pommes"),
    ("A long message on two lines", "Un long message sur deux lignes"),
    ("Hello world", "Bonjour le monde"),
    ("Open file", "Ouvrir le fichier"),
]
FR_COUNTS = {
    "fuzzy": 1, "obsolete": 1, "untranslated": 1, "identical": 1,
    "format_only": 1, "length_ratio": 1, "duplicate": 1,
}


def _po(entries):
    po = polib.POFile()
    po.metadata = {"Content-Type": "text/plain; charset=UTF-8"}
    for msgid, msgstr in entries:
        po.append(polib.POEntry(msgid=msgid, msgstr=msgstr))
    return po


def _mo_bytes(po, tmp_path, name="x.mo"):
    path = tmp_path / name
    po.save_as_mofile(str(path))
    return path.read_bytes()


def make_wheel(path, members, name="demo", version="1.0", licence="BSD-3-Clause"):
    """A minimal wheel: a METADATA file plus the given {member: bytes or str}."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}-{version}.dist-info/METADATA",
                    f"Metadata-Version: 2.4\nName: {name}\nVersion: {version}\nLicense-Expression: {licence}\n")
        for member, data in members.items():
            zf.writestr(member, data)
    return path


@pytest.fixture
def demo_wheel(tmp_path):
    de_mo = _mo_bytes(_po([("Hello world", "Hallo Welt"), ("Open file", "Datei öffnen")]), tmp_path)
    decoy_mo = _mo_bytes(_po([("Hello world", "NOT FROM THE .po")]), tmp_path, "decoy.mo")
    return make_wheel(tmp_path / "demo-1.0-py3-none-any.whl", {
        "pkg/locale/fr/LC_MESSAGES/django.po": FR_PO,
        "pkg/locale/fr/LC_MESSAGES/django.mo": decoy_mo,  # ignored: the .po beside it wins
        "pkg/locale/de_DE/LC_MESSAGES/django.mo": de_mo,  # .mo only; de_DE merges into de
        "pkg/locale/en/LC_MESSAGES/django.po": str(_po([("Hello world", "Hello world!")])),
        "pkg/locale/en_GB/LC_MESSAGES/django.po": str(_po([("Color", "Colour")])),
        "pkg/locale/ca@valencia/LC_MESSAGES/django.po": str(_po([("Hello world", "Hola món")])),
        "pkg/templates/locale.html": "<p>not a catalogue</p>",
    })


# --------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("_File", "File"),
        ("&File", "File"),
        ("Save &As...", "Save As..."),
        ("ファイル(&F)", "ファイル"),
        ("開く (_O)", "開く"),
        ("Fish &amp; chips &#39;x&#x27;", "Fish &amp; chips &#39;x&#x27;"),
        ("R&D and Q&A", "R&D and Q&A"),
        ("file_name and __init__ and my_var_2", "file_name and __init__ and my_var_2"),
        ("& alone", "& alone"),
        ("&Öffnen", "Öffnen"),
    ],
)
def test_strip_accelerators(text, expected):
    assert strip_accelerators(text) == expected


def test_normalize_whitespace():
    assert normalize_whitespace("  a\n b\t\tc \r\n") == "a b c"
    assert normalize_whitespace("Attention\u202f:") == "Attention\u202f:"  # no-break spaces are kept
    assert normalize("_Open\n  the   file ") == "Open the file"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("%s", True),
        ("%(name)s: %d%%", True),
        ("{0} / {name}", True),
        ("<a href=\"x\">%(n)s</a>&nbsp;&#160;", True),
        ("{{ var }} %5.2f", True),
        ("123 - 456", True),
        ("%s file", False),
        ("<b>Bold</b>", False),
        ("文件 %s", False),
    ],
)
def test_is_format_only(text, expected):
    assert is_format_only(text) is expected


def test_length_ratio():
    assert length_ratio_ok("OK", "Aceptar")  # the slack keeps short strings
    assert not length_ratio_ok("Yes", "Oui, absolument, sans le moindre doute possible")
    assert not length_ratio_ok("A rather long English sentence here", "X")
    assert length_ratio_ok("Yes", "Oui, absolument, sans le moindre doute possible", max_ratio=10)
    # Wide characters count double: a compact Chinese rendering is not "too short".
    en = "The configuration value could not be loaded from the settings file because it is invalid"
    assert length_ratio_ok(en, "无法从设置文件加载配置值，因为它无效")


def test_first_failing_rule_order():
    assert first_failing_rule(Candidate("a b", "", fuzzy=True, obsolete=True)) == "fuzzy"
    assert first_failing_rule(Candidate("a b", "", obsolete=True)) == "obsolete"
    assert first_failing_rule(Candidate("a b", "")) == "untranslated"
    assert first_failing_rule(Candidate("%s", "%s")) == "identical"
    assert first_failing_rule(Candidate("%s", "%s x")) == "format_only"
    assert first_failing_rule(Candidate("Hello", "Bonjour")) is None


def test_entry_candidates_plural_and_header():
    entry = polib.POEntry(msgid="%d file", msgid_plural="%d files", msgstr_plural={0: "%d fichier", 1: "%d fichiers"})
    assert [(c.en, c.xx) for c in entry_candidates(entry)] == [("%d file", "%d fichier"), ("%d files", "%d fichiers")]
    single_form = polib.POEntry(msgid="%d file", msgid_plural="%d files", msgstr_plural={0: "%d 个文件"})
    assert [(c.en, c.xx) for c in entry_candidates(single_form)] == [("%d file", "%d 个文件")]
    assert list(entry_candidates(polib.POEntry(msgid="", msgstr="Content-Type: ..."))) == []


def test_filter_pairs_counts_each_rule():
    po = polib.pofile(FR_PO)
    candidates = [c for e in po for c in entry_candidates(e)]
    kept, counts = filter_pairs(candidates)
    assert kept == FR_KEPT
    assert counts == FR_COUNTS


@pytest.mark.parametrize(
    "locale, expected",
    [("fr", "fr"), ("de_DE", "de"), ("pt_PT", "pt"), ("pt_BR", "pt_BR"), ("es_AR", "es_AR"), ("zh", "zh_Hans"),
     ("zh_TW", "zh_Hant"), ("sr_RS@latin", "sr_Latn"), ("he_IL", "he"), ("no", "nb"), ("ar_DZ", "ar_DZ")],
)
def test_catalog_language(locale, expected):
    assert catalog_language(locale) == expected


def test_catalog_members_prefers_po():
    names = ["a/locale/fr/LC_MESSAGES/d.po", "a/locale/fr/LC_MESSAGES/d.mo", "a/locale/de/LC_MESSAGES/d.mo",
             "locale/ja/LC_MESSAGES/x.po", "a/locale/fr/d.po", "a/locale.py"]
    assert catalog_members(names) == {
        "a/locale/de/LC_MESSAGES/d.mo": "de",
        "a/locale/fr/LC_MESSAGES/d.po": "fr",
        "locale/ja/LC_MESSAGES/x.po": "ja",
    }


def test_split_of_is_deterministic_and_proportional():
    strings = [f"Message number {i}" for i in range(20000)]
    splits = [split_of(s) for s in strings]
    assert splits == [split_of(s) for s in strings]
    share = {s: splits.count(s) / len(splits) for s in SPLITS}
    assert abs(share["valid"] - 0.02) < 0.005 and abs(share["test"] - 0.03) < 0.005
    assert {split_of(s, valid_frac=0, test_frac=0) for s in strings[:100]} == {"train"}
    assert {split_of(s, valid_frac=0, test_frac=0.999999) for s in strings[:100]} == {"test"}


# --------------------------------------------------------------------------------------
# Wheels and extraction
# --------------------------------------------------------------------------------------


def test_extract_wheel(demo_wheel):
    source, by_lang = extract_wheel(demo_wheel)
    assert source["name"] == "demo" and source["version"] == "1.0" and source["license"] == "BSD-3-Clause"
    assert source["catalogues"] == 2 and len(source["sha256"]) == 64
    assert source["skipped_catalogues"] == {"English": 2, "locale 'ca@valencia': no canonical language code": 1}
    assert set(by_lang) == {"fr", "de"}
    assert [(c.en, c.xx) for c in by_lang["de"]] == [("Hello world", "Hallo Welt"), ("Open file", "Datei öffnen")]
    kept, counts = filter_pairs(by_lang["fr"])
    assert kept == FR_KEPT and counts == FR_COUNTS


def test_extract_wheel_bad_files(tmp_path):
    bad = tmp_path / "bad-1.0-py3-none-any.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot open wheel"):
        extract_wheel(bad)
    nometa = tmp_path / "nometa-1.0-py3-none-any.whl"
    with zipfile.ZipFile(nometa, "w") as zf:
        zf.writestr("x.txt", "x")
    with pytest.raises(DataError, match="no \\*.dist-info/METADATA"):
        extract_wheel(nometa)
    broken = make_wheel(tmp_path / "broken-1.0-py3-none-any.whl", {"p/locale/fr/LC_MESSAGES/d.mo": b"garbage"})
    source, by_lang = extract_wheel(broken)
    assert by_lang == {} and "unreadable" in next(iter(source["skipped_catalogues"]))


def test_download_wheels_uses_paths_and_cache(tmp_path, monkeypatch, demo_wheel):
    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run")

    monkeypatch.setattr(subprocess, "run", no_pip)
    cache = tmp_path / "cache"
    cache.mkdir()
    cached = cache / "django_allauth-65.21.1-py3-none-any.whl"
    cached.write_bytes(b"")
    assert download_wheels([str(demo_wheel), "Django-Allauth==65.21.1"], cache) == [demo_wheel, cached]


def test_download_wheels_runs_pip(tmp_path, monkeypatch):
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        dest = cmd[cmd.index("-d") + 1]
        (tmp_path / "cache" / "Trac-1.6-py3-none-any.whl").write_bytes(b"")
        assert dest == str(tmp_path / "cache")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    assert download_wheels(["Trac==1.6"], tmp_path / "cache") == [tmp_path / "cache" / "Trac-1.6-py3-none-any.whl"]
    assert calls[0][1:5] == ["-m", "pip", "download", "--no-deps"] and "--only-binary=:all:" in calls[0]
    assert calls[0][-1] == "Trac==1.6"


def test_download_wheels_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 1, "", "Looking in indexes...\nERROR: No matching distribution found for nopkg==9.9\n"))
    with pytest.raises(DataError, match=r"(?s)pip download nopkg==9.9 failed.*No matching distribution"):
        download_wheels(["nopkg==9.9"], tmp_path)
    with pytest.raises(DataError, match="name==version"):
        download_wheels(["django"], tmp_path)
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, "", ""))
    with pytest.raises(DataError, match="no matching wheel"):
        download_wheels(["ghost==1.0"], tmp_path)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MASSIVE_MT_CACHE", str(tmp_path))
    assert catalogs.default_cache_dir() == tmp_path / "wheels"
    monkeypatch.delenv("MASSIVE_MT_CACHE")
    assert catalogs.default_cache_dir().parts[-3:] == (".cache", "massive_mt", "wheels")


# --------------------------------------------------------------------------------------
# build_catalog_corpus
# --------------------------------------------------------------------------------------


def _synthetic_wheels(tmp_path):
    """Two wheels sharing English strings across fr, de and ja (ja too small to keep)."""
    english = [f"Setting number {i} was changed" for i in range(600)]
    w1 = make_wheel(tmp_path / "one-1.0-py3-none-any.whl", {
        "one/locale/fr/LC_MESSAGES/django.po": str(_po([(e, f"Réglage {e[15:]}") for e in english[:400]])),
        "one/locale/de/LC_MESSAGES/django.po": str(_po([(e, f"Einstellung {e[15:]}") for e in english])),
    }, name="one", licence="MIT")
    w2 = make_wheel(tmp_path / "two-2.0-py3-none-any.whl", {
        "two/locale/fr_FR/LC_MESSAGES/messages.po": str(_po([(e, f"Réglage {e[15:]}") for e in english[300:]])),
        "two/locale/ja/LC_MESSAGES/messages.po": str(_po([(e, f"設定 {e[15:]}") for e in english[:50]])),
    }, name="two", version="2.0")
    return english, [str(w1), str(w2)]


def test_build_catalog_corpus(tmp_path):
    english, wheels = _synthetic_wheels(tmp_path)
    out = tmp_path / "corpus"
    manifest = build_catalog_corpus(out, wheels=wheels, min_pairs=100, progress=False)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "one-1.0-py3-none-any.whl",
                                                           "two-2.0-py3-none-any.whl"]  # no temp dir left
    assert json.loads((out / "manifest.json").read_text()) == manifest
    corpus = load_corpus(out)
    assert set(corpus.pairs) == {"en-de", "en-fr"}
    assert manifest["dropped_languages"] == {"ja": sum(split_of(e) == "train" for e in english[:50])}
    assert [(s["name"], s["version"], s["license"]) for s in manifest["sources"]] == [
        ("one", "1.0", "MIT"), ("two", "2.0", "BSD-3-Clause")]
    # fr merges both wheels (fr + fr_FR) and drops the 100 overlapping entries as duplicates.
    assert sum(corpus.pairs["en-fr"].sizes.values()) == 600
    assert manifest["filters"]["per_language"]["fr"]["duplicate"] == 100
    assert manifest["filters"]["total"]["duplicate"] == 100

    # The same English string lands in the same split for every language, and never in two.
    seen: dict[str, str] = {}
    for (src, tgt) in resolve_tasks(manifest, "one_to_many"):
        for split in SPLITS:
            if corpus.pairs[f"{src}-{tgt}"].sizes[split]:
                for en, _ in corpus.read(split, src, tgt):
                    assert seen.setdefault(en, split) == split
                    assert split == split_of(en)
    assert set(seen.values()) == set(SPLITS)

    # Deterministic: a second build is byte-identical.
    out2 = tmp_path / "corpus2"
    build_catalog_corpus(out2, wheels=wheels, min_pairs=100, progress=False)
    for path in out.iterdir():
        assert (out2 / path.name).read_bytes() == path.read_bytes()


def test_build_catalog_corpus_real_catalogue(tmp_path, demo_wheel):
    out = tmp_path / "corpus"
    manifest = build_catalog_corpus(out, wheels=[str(demo_wheel)], min_pairs=1, valid_frac=0, test_frac=0,
                                    progress=False)
    assert manifest["filters"]["per_language"]["fr"] == FR_COUNTS
    assert read_parallel(out / "train.en-fr.en", out / "train.en-fr.fr") == FR_KEPT
    assert load_corpus(out).pairs["en-de"].sizes == {"train": 2, "valid": 0, "test": 0}


def test_build_catalog_corpus_failures_leave_nothing(tmp_path, demo_wheel, monkeypatch):
    out = tmp_path / "corpus"
    with pytest.raises(DataError, match="no language has 1000 training pairs"):
        build_catalog_corpus(out, wheels=[str(demo_wheel)], min_pairs=1000, progress=False)

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(catalogs, "write_manifest", crash)
    with pytest.raises(RuntimeError):
        build_catalog_corpus(out, wheels=[str(demo_wheel)], min_pairs=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoy.mo", "demo-1.0-py3-none-any.whl", "x.mo"]


def test_build_catalog_corpus_refuses_existing_output(tmp_path, demo_wheel):
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not an empty directory"):
        build_catalog_corpus(out, wheels=[str(demo_wheel)], min_pairs=1, progress=False)
    with pytest.raises(DataError, match="valid_frac"):
        build_catalog_corpus(tmp_path / "c2", wheels=[str(demo_wheel)], valid_frac=0.6, test_frac=0.5)
    (out / "keep.txt").unlink()  # an empty directory is fine
    build_catalog_corpus(out, wheels=[str(demo_wheel)], min_pairs=1, progress=False)
    assert (out / "manifest.json").exists()
