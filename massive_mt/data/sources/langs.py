"""From the locale names that packages use to the corpus's language codes.

``catalogs.catalog_language`` (``canonical_lang`` with ``langcodes``, plus the corpus's
region merges) does the work; this module first rewrites the spellings that only some
sources use: MediaWiki's ``-formal``/``-informal`` registers and ``sr-ec``/``sr-el``,
gettext's ``@valencia``, Mozilla's ``ga-IE``, and the macrolanguage ``ku`` for Kurmanji.
"""

from __future__ import annotations

import re

import langcodes

from massive_mt.data.candidates import catalog_language, HOME_REGION
from massive_mt.data.corpus import is_english
from massive_mt.errors import DataError

# Whole locale -> the code canonical_lang() understands. Registers fold into the language.
LOCALE_ALIASES = {
    "sr-ec": "sr", "sr-el": "sr_Latn", "sr_el": "sr_Latn",
    "sr@ijekavian": "sr_ijekavsk", "sr@ijekavianlatin": "sr_Latn_ijekavsk",  # BCP 47 variant "ijekavsk"
    "kmr": "ku", "kmr-latn": "ku", "kmr_latn": "ku",  # Kurmanji: catalogues use both codes
    "zh-classical": "lzh", "zh-yue": "yue", "zh-min-nan": "nan", "cbk-zam": "cbk", "fiu-vro": "vro",
    "roa-rup": "rup", "bat-smg": "sgs", "be-x-old": "be-tarask", "simple": "en", "en@shaw": "en",
    "mni@bengali": "mni", "tt@iqtelif": "tt_Latn",
}
_REGISTER_RE = re.compile(r"[-_](formal|informal)$", re.I)
# Pseudo and documentation locales: never a language.
PSEUDO = {"qqq", "qqx", "qps", "qps-ploc", "qps-plocm", "ja-kana", "x-test", "en@quot", "en@boldquot", "ia-x-test"}


def corpus_language(locale: str) -> str | None:
    """The corpus code of ``locale``; None for English, pseudo-locales and codes with no
    canonical form (the caller counts those as skips). ``ca@valencia`` -> ``ca_valencia``."""
    raw = locale.strip()
    low = raw.lower()
    if low in PSEUDO or low.endswith(("@quot", "@boldquot")):
        return None
    low = _REGISTER_RE.sub("", low)
    low = LOCALE_ALIASES.get(low, low)
    low = low.replace("@valencia", "_valencia").replace("@latn", "@latin").replace("@cyrl", "@cyrillic")
    try:
        lang = catalog_language(low)
    except DataError:
        return None
    return None if is_english(lang) else drop_likely_region(lang)


def drop_likely_region(lang: str) -> str:
    """``gu_IN`` -> ``gu``, ``jv_ID`` -> ``jv``: a region that is the language's likely one (CLDR
    likely subtags, via ``langcodes``) adds nothing. Languages with several established national
    variants (``catalogs.HOME_REGION``: es, pt, de, ar, ...) keep their regions as the default build
    does (``pt_BR``, ``es_AR``, ``de_AT``), and so does a region elsewhere (``pa_PK``, ``ar_DZ``)."""
    parts = lang.split("_")
    region = next((p for p in parts[1:] if p.isupper() or p.isdigit()), None)
    if region is None or parts[0] in HOME_REGION:
        return lang
    likely = langcodes.Language.get(parts[0]).maximize().territory
    return "_".join(p for p in parts if p != region) if region == likely else lang


def is_pseudo_or_english(locale: str) -> bool:
    low = locale.strip().lower()
    if low in PSEUDO or low.endswith(("@quot", "@boldquot")):
        return True
    try:
        return is_english(_REGISTER_RE.sub("", LOCALE_ALIASES.get(low, low)))
    except DataError:
        return False
