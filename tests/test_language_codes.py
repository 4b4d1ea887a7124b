"""The map from corpus language codes to NLLB-200/FLORES-200 and M2M-100 codes
(massive_mt/data/language_codes.py), against transformers' language lists and langcodes."""

from __future__ import annotations

import re
from pathlib import Path

import langcodes
import pytest

from massive_mt.data.language_codes import (M2M100, NLLB200, NLLB_INDIVIDUAL, NLLB_SCRIPT, collisions, m2m100_code,
                                            model_codes,
                                            nllb_code, script_of)
from massive_mt.errors import DataError

REPO = Path(__file__).resolve().parents[1]
# the languages of `massive-mt build-corpus --sources full` (manifest "languages", 2026-12-06)
FULL_LANGUAGES = (Path(__file__).with_name("data") / "full_corpus_languages.txt").read_text().split()
# NLLB's individual language where langcodes' matching data does not relate it to the
# macrolanguage (tag_distance > 10), checked by hand against ISO 639-3's macrolanguage tables
LANGCODES_DISAGREES = {"qu": "quy", "ps": "pbt", "ff": "fuv"}


def test_lists_are_the_tokenizers_lists():
    from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES as M2M
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES as NLLB
    assert NLLB200 == tuple(NLLB) and len(NLLB200) == 202
    assert M2M100 == tuple(M2M["m2m100"]) and len(M2M100) == 100


@pytest.mark.parametrize("lang, nllb, m2m", [
    ("fr", "fra_Latn", "fr"), ("pt_BR", "por_Latn", "pt"), ("sr", "srp_Cyrl", "sr"), ("zh_Hant", "zho_Hant", None),
    ("zh_Hans", "zho_Hans", "zh"), ("ms", "zsm_Latn", "ms"), ("fa", "pes_Arab", "fa"), ("fa_AF", "prs_Arab", "fa"),
    ("lv", "lvs_Latn", "lv"), ("sw", "swh_Latn", "sw"), ("uz", "uzn_Latn", "uz"), ("mg", "plt_Latn", "mg"),
    ("az_Arab", "azb_Arab", None), ("fil", "tgl_Latn", "tl"), ("nb", "nob_Latn", "no"), ("nso", "nso_Latn", "ns"),
    ("sr_Latn", None, None),   # a script NLLB lacks is not mapped to another script
    ("tzm", None, None),       # NLLB has tzm_Tfng only; the corpus's tzm is Latin
    ("ilo", "ilo_Latn", "ilo"), ("scn", "scn_Latn", None), ("ca_valencia", "cat_Latn", "ca"),
])
def test_examples(lang, nllb, m2m):
    assert (nllb_code(lang), m2m100_code(lang)) == (nllb, m2m)


def test_every_full_corpus_language_nllb_covers_agrees_with_langcodes():
    assert len(FULL_LANGUAGES) == 509
    mapped = {lang: nllb_code(lang) for lang in FULL_LANGUAGES}
    checked = 0
    for lang, code in mapped.items():
        if code is None:
            continue
        language, script = code.split("_")
        assert script == NLLB_SCRIPT.get(script_of(lang), script_of(lang)) or script_of(lang) is None, (lang, code)
        tag = langcodes.Language.get(lang.replace("_", "-"))
        if tag.language in LANGCODES_DISAGREES:
            assert language == LANGCODES_DISAGREES[tag.language], (lang, code)
        else:
            assert langcodes.tag_distance(tag.language, language) <= 10, (lang, code)
        checked += 1
    assert checked == sum(c is not None for c in mapped.values()) > 150


def test_the_docs_list_the_full_corpus_languages_nllb_lacks():
    lacking = sorted(lang for lang in FULL_LANGUAGES if nllb_code(lang) is None)
    doc = (REPO / "docs" / "languages.md").read_text()
    block = re.search(r"<!-- nllb-lacks -->\n(.*?)\n<!-- /nllb-lacks -->", doc, re.S).group(1)
    assert sorted(re.findall(r"`([^`]+)`", block)) == lacking
    covered = len(FULL_LANGUAGES) - len(lacking)
    assert f"{covered} of the {len(FULL_LANGUAGES)} languages" in doc


def test_hand_table_targets_are_nllb_codes():
    nllb_languages = {c.split("_")[0] for c in NLLB200}
    assert set(NLLB_INDIVIDUAL.values()) <= nllb_languages


def test_model_codes_lists_what_the_model_lacks_and_shared_codes():
    assert model_codes(["fr", "de"], "nllb") == {"fr": "fra_Latn", "de": "deu_Latn"}
    with pytest.raises(DataError, match=r"2 corpus language\(s\) have no nllb code: sr_Latn, tzm "):
        model_codes(["fr", "sr_Latn", "tzm"], "nllb")
    assert model_codes(["fr", "tzm"], "nllb", added=["tzm"]) == {"fr": "fra_Latn", "tzm": None}
    with pytest.raises(DataError, match=r"share a m2m100 code: pt: pt, pt_BR"):
        model_codes(["pt", "pt_BR"], "m2m100")
    assert collisions({"pt": "por_Latn", "pt_BR": "por_Latn", "fr": "fra_Latn"}) == {"por_Latn": ["pt", "pt_BR"]}
    with pytest.raises(DataError, match="model family 'mbart'"):
        model_codes(["fr"], "mbart")
