"""The corpus's language codes as pretrained models and benchmarks name them.

The corpus names a language with a canonical BCP 47 code (``corpus.canonical_lang``:
``fr``, ``pt_BR``, ``sr_Latn``, ``zh_Hant``, ``ca_valencia``; the script only where it is not
the language's usual one). NLLB-200 and FLORES-200 name it ``fra_Latn``: an ISO 639-3 code of
the *individual* language and an explicit ISO 15924 script; M2M-100 names it ``fr`` (ISO 639-1
where there is one, no script). This module is the one map between them:

* the script is made explicit with langcodes' likely subtags (``zh`` -> Hans, ``sr`` -> Cyrl);
  where langcodes has none for a language (``acm``, ``azb``), NLLB's only script for it is taken;
* where the corpus code is a macrolanguage and NLLB names one of its individual languages,
  ``NLLB_INDIVIDUAL`` says which (``ms`` -> ``zsm``, ``fa`` -> ``pes``, ``fa_AF`` -> ``prs``);
* region and variant subtags are dropped (``pt_BR`` -> ``por_Latn``, ``ca_valencia`` ->
  ``cat_Latn``): the models have one code per language and script, so several corpus codes can
  share one model code (``collisions``);
* a script the model lacks is never mapped to another one: ``sr_Latn`` has no NLLB code
  (NLLB has only ``srp_Cyrl``), ``zh_Hant`` has no M2M-100 code.

``NLLB200`` and ``M2M100`` are the models' language lists in their tokenizers' order
(the order of their language-token ids).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import langcodes
from langcodes.data_dicts import LIKELY_SUBTAGS

from massive_mt.errors import DataError

NLLB200: tuple[str, ...] = tuple("""
ace_Arab ace_Latn acm_Arab acq_Arab aeb_Arab afr_Latn ajp_Arab aka_Latn amh_Ethi apc_Arab arb_Arab ars_Arab
ary_Arab arz_Arab asm_Beng ast_Latn awa_Deva ayr_Latn azb_Arab azj_Latn bak_Cyrl bam_Latn ban_Latn bel_Cyrl
bem_Latn ben_Beng bho_Deva bjn_Arab bjn_Latn bod_Tibt bos_Latn bug_Latn bul_Cyrl cat_Latn ceb_Latn ces_Latn
cjk_Latn ckb_Arab crh_Latn cym_Latn dan_Latn deu_Latn dik_Latn dyu_Latn dzo_Tibt ell_Grek eng_Latn epo_Latn
est_Latn eus_Latn ewe_Latn fao_Latn pes_Arab fij_Latn fin_Latn fon_Latn fra_Latn fur_Latn fuv_Latn gla_Latn
gle_Latn glg_Latn grn_Latn guj_Gujr hat_Latn hau_Latn heb_Hebr hin_Deva hne_Deva hrv_Latn hun_Latn hye_Armn
ibo_Latn ilo_Latn ind_Latn isl_Latn ita_Latn jav_Latn jpn_Jpan kab_Latn kac_Latn kam_Latn kan_Knda kas_Arab
kas_Deva kat_Geor knc_Arab knc_Latn kaz_Cyrl kbp_Latn kea_Latn khm_Khmr kik_Latn kin_Latn kir_Cyrl kmb_Latn
kon_Latn kor_Hang kmr_Latn lao_Laoo lvs_Latn lij_Latn lim_Latn lin_Latn lit_Latn lmo_Latn ltg_Latn ltz_Latn
lua_Latn lug_Latn luo_Latn lus_Latn mag_Deva mai_Deva mal_Mlym mar_Deva min_Latn mkd_Cyrl plt_Latn mlt_Latn
mni_Beng khk_Cyrl mos_Latn mri_Latn zsm_Latn mya_Mymr nld_Latn nno_Latn nob_Latn npi_Deva nso_Latn nus_Latn
nya_Latn oci_Latn gaz_Latn ory_Orya pag_Latn pan_Guru pap_Latn pol_Latn por_Latn prs_Arab pbt_Arab quy_Latn
ron_Latn run_Latn rus_Cyrl sag_Latn san_Deva sat_Beng scn_Latn shn_Mymr sin_Sinh slk_Latn slv_Latn smo_Latn
sna_Latn snd_Arab som_Latn sot_Latn spa_Latn als_Latn srd_Latn srp_Cyrl ssw_Latn sun_Latn swe_Latn swh_Latn
szl_Latn tam_Taml tat_Cyrl tel_Telu tgk_Cyrl tgl_Latn tha_Thai tir_Ethi taq_Latn taq_Tfng tpi_Latn tsn_Latn
tso_Latn tuk_Latn tum_Latn tur_Latn twi_Latn tzm_Tfng uig_Arab ukr_Cyrl umb_Latn urd_Arab uzn_Latn vec_Latn
vie_Latn war_Latn wol_Latn xho_Latn ydd_Hebr yor_Latn yue_Hant zho_Hans zho_Hant zul_Latn
""".split())

M2M100: tuple[str, ...] = tuple("""
af am ar ast az ba be bg bn br bs ca ceb cs cy da de el en es et fa ff fi fr fy ga gd gl gu ha he hi hr ht hu hy
id ig ilo is it ja jv ka kk km kn ko lb lg ln lo lt lv mg mk ml mn mr ms my ne nl no ns oc or pa pl ps pt ro ru sd
si sk sl so sq sr ss su sv sw ta th tl tn tr uk ur uz vi wo xh yi yo zh zu
""".split())

# Where NLLB names an individual language (or another code) than the ISO 639-3 code of the
# corpus's language: keyed by language, language_Script or language_REGION.
NLLB_INDIVIDUAL: dict[str, str] = {
    "ar": "arb",      # Arabic -> Modern Standard Arabic
    "ay": "ayr",      # Aymara -> Central Aymara
    "az": "azj",      # Azerbaijani (Latin) -> North Azerbaijani
    "az_Arab": "azb",  # Azerbaijani in Arabic script -> South Azerbaijani
    "din": "dik",     # Dinka -> Southwestern Dinka
    "fa": "pes",      # Persian -> Iranian Persian
    "fa_AF": "prs",   # Persian of Afghanistan -> Dari
    "ff": "fuv",      # Fulah -> Nigerian Fulfulde
    "fil": "tgl",     # Filipino (the corpus's code for tl) -> Tagalog
    "gug": "grn",     # Paraguayan Guarani -> Guarani
    "kr": "knc",      # Kanuri -> Central Kanuri
    "ku": "kmr",      # Kurdish (Latin) -> Northern Kurdish
    "lv": "lvs",      # Latvian -> Standard Latvian
    "mg": "plt",      # Malagasy -> Plateau Malagasy
    "mn": "khk",      # Mongolian -> Halh Mongolian
    "ms": "zsm",      # Malay -> Standard Malay
    "ne": "npi",      # Nepali -> Nepali (individual language)
    "no": "nob",      # Norwegian -> Norwegian Bokmål
    "om": "gaz",      # Oromo -> West Central Oromo
    "or": "ory",      # Odia -> Odia (individual language)
    "ps": "pbt",      # Pashto -> Southern Pashto
    "qu": "quy",      # Quechua -> Ayacucho Quechua
    "sq": "als",      # Albanian -> Tosk Albanian
    "sw": "swh",      # Swahili -> Swahili (individual language)
    "uz": "uzn",      # Uzbek -> Northern Uzbek
    "yi": "ydd",      # Yiddish -> Eastern Yiddish
}

# ISO 15924 names that NLLB writes otherwise: Korean is Kore (Hangul + Han) in CLDR's likely
# subtags, Hang in NLLB
NLLB_SCRIPT = {"Kore": "Hang"}

# M2M-100 codes that are not the corpus's code of the same language.
M2M100_CODE: dict[str, str] = {"fil": "tl", "nb": "no", "nso": "ns"}

FAMILIES = ("nllb", "m2m100")


@lru_cache(maxsize=None)
def _tag(lang: str) -> langcodes.Language:
    try:
        return langcodes.Language.get(lang.replace("_", "-"))
    except (ValueError, LookupError) as err:
        raise DataError(f"language code {lang!r}: not a BCP 47 tag ({err})") from None


def script_of(lang: str) -> str | None:
    """The script of a corpus language, explicit (``zh`` -> ``Hans``, ``sr_Latn`` -> ``Latn``):
    the tag's own, else langcodes' likely subtags; None where langcodes has no likely subtags
    for the language (its ``maximize`` would answer ``Latn`` for any unknown language)."""
    tag = _tag(lang)
    if tag.script:
        return tag.script
    if tag.language not in LIKELY_SUBTAGS:
        return None
    return tag.maximize().script


def _alpha3(tag: langcodes.Language) -> str | None:
    try:
        return tag.to_alpha3()
    except LookupError:  # not an ISO 639 language (e.g. a project's private code)
        return None


def nllb_code(lang: str) -> str | None:
    """The NLLB-200 / FLORES-200 code of a corpus language (``pt_BR`` -> ``por_Latn``), or None
    where NLLB has no code for that language in that script."""
    tag, script = _tag(lang), script_of(lang)
    keys = [f"{tag.language}_{tag.territory}" if tag.territory else None, f"{tag.language}_{script}", tag.language]
    language = next((NLLB_INDIVIDUAL[k] for k in keys if k in NLLB_INDIVIDUAL), None) or _alpha3(tag)
    if language is None:
        return None
    if script is None:  # no likely script known: NLLB's only script for the language, if it has one
        scripts = [c for c in NLLB200 if c.split("_")[0] == language]
        return scripts[0] if len(scripts) == 1 else None
    code = f"{language}_{NLLB_SCRIPT.get(script, script)}"
    return code if code in _NLLB_SET else None


def m2m100_code(lang: str) -> str | None:
    """The M2M-100 code of a corpus language (``fr`` -> ``fr``), or None where M2M-100 lacks the
    language or the corpus language is in a script other than the language's usual one."""
    tag = _tag(lang)
    if script_of(lang) is None or script_of(lang) != script_of(tag.language):
        return None
    code = M2M100_CODE.get(tag.language, tag.language)
    return code if code in _M2M100_SET else None


def model_code(lang: str, family: str) -> str | None:
    """``nllb_code`` or ``m2m100_code`` by model family (``FAMILIES``)."""
    if family == "nllb":
        return nllb_code(lang)
    if family == "m2m100":
        return m2m100_code(lang)
    raise DataError(f"model family {family!r}: expected one of {', '.join(FAMILIES)}")


def model_codes(langs: Iterable[str], family: str, added: Iterable[str] = ()) -> dict[str, str | None]:
    """{corpus language: model code} for ``langs``; DataError listing every language the model
    lacks unless it is in ``added`` (new languages, mapped to None), and every model code that
    two corpus languages would share."""
    langs, added = list(langs), set(added)
    codes = {lang: (None if lang in added else model_code(lang, family)) for lang in langs}
    lacking = [lang for lang, code in codes.items() if code is None and lang not in added]
    if lacking:
        raise DataError(f"{len(lacking)} corpus language(s) have no {family} code: {', '.join(lacking)} "
                        "(leave them out with --langs, or add them as new languages with --add-languages)")
    shared = collisions(codes)
    if shared:
        raise DataError(f"corpus languages share a {family} code: "
                        + "; ".join(f"{code}: {', '.join(ls)}" for code, ls in shared.items())
                        + " (keep one of each with --langs)")
    return codes


def collisions(codes: dict[str, str | None]) -> dict[str, list[str]]:
    """{model code: [corpus languages]} for codes that more than one corpus language maps to."""
    by_code: dict[str, list[str]] = {}
    for lang, code in codes.items():
        if code is not None:
            by_code.setdefault(code, []).append(lang)
    return {code: sorted(ls) for code, ls in sorted(by_code.items()) if len(ls) > 1}


def coverage(langs: Iterable[str]) -> dict:
    """For each family: {lang: code}, the languages without a code, and the shared codes."""
    langs = list(langs)
    out = {}
    for family in FAMILIES:
        codes = {lang: model_code(lang, family) for lang in langs}
        out[family] = {"codes": codes, "lacking": sorted(lang for lang, c in codes.items() if c is None),
                       "shared": collisions(codes)}
    return out


_NLLB_SET = frozenset(NLLB200)
_M2M100_SET = frozenset(M2M100)
