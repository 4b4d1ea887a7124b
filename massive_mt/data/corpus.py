"""The on-disk parallel corpus layout (fairseq/OPUS style).

A corpus directory holds plain-text files ``{split}.{src}-{tgt}.{lang}``: one
sentence per line, the two sides of a pair parallel by line, e.g.
``train.en-fr.en`` and ``train.en-fr.fr``. Language codes use underscores for
subtags (``pt_BR``, ``zh_Hans``, ``sr_Latn``) so that ``-`` only ever separates
the two languages of a pair. An optional ``manifest.json`` records the pairs,
their sizes and the provenance of the data::

    {"format": "massive_mt.corpus/1", "pivot": "en",
     "pairs": {"en-fr": {"src": "en", "tgt": "fr", "train": 9000, "valid": 200, "test": 300}},
     "sources": [...]}

Without a manifest the directory is scanned, so any TED/WMT/OPUS-100 files named
this way can be used directly. A split with no data has no files and size 0; an empty file is an
error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import langcodes

from massive_mt.errors import DataError
from massive_mt.io import atomic_write_json, atomic_write_texts, read_json_object

SPLITS = ("train", "valid", "test")
MANIFEST_NAME = "manifest.json"
CORPUS_FORMAT = "massive_mt.corpus/1"

# --------------------------------------------------------------------------------------
# Language codes
# --------------------------------------------------------------------------------------

# A canonical code: language (ISO 639-1/3, lower case), optional script (ISO 15924,
# title case), optional region (ISO 3166 upper case or UN M.49 digits), optional BCP 47
# variant (lower case, 5-8 characters or a digit and 3: ``ca_valencia``, ``be_tarask``).
LANG_RE = re.compile(r"^[a-z]{2,3}(_[A-Z][a-z]{3})?(_([A-Z]{2}|[0-9]{3}))?(_([a-z0-9]{5,8}|[0-9][a-z0-9]{3}))?$")
VARIANT_RE = re.compile(r"[a-z0-9]{5,8}|[0-9][a-z0-9]{3}")

# Deprecated or non-standard language subtags -> current ISO 639 code.
LANGUAGE_ALIASES = {
    "iw": "he",  # Hebrew
    "in": "id",  # Indonesian
    "ji": "yi",  # Yiddish
    "jw": "jv",  # Javanese
    "mo": "ro",  # Moldavian -> Romanian
    "no": "nb",  # generic Norwegian: gettext catalogues are Bokmål
}

# Whole locales that denote a script rather than a regional variant.
LOCALE_ALIASES = {
    "zh_CN": "zh_Hans",
    "zh_SG": "zh_Hans",
    "zh_TW": "zh_Hant",
    "zh_HK": "zh_Hant",
    "zh_MO": "zh_Hant",
}

# glibc/gettext "@modifier" suffixes. A modifier naming a script becomes the script
# subtag; one that only names a currency is dropped; any other (e.g. "@valencia")
# has no equivalent in the code syntax above and is rejected.
MODIFIER_SCRIPTS = {"latin": "Latn", "cyrillic": "Cyrl", "arabic": "Arab", "devanagari": "Deva"}
IGNORED_MODIFIERS = {"euro"}


# Languages whose script is always written out, because both scripts are in wide use
# and a bare code would hide which one a text is in (zh_CN -> zh_Hans, as above).
EXPLICIT_SCRIPT = {"zh"}


def _standardize(lang: str, script: str | None, region: str | None, code: str):
    """BCP 47 standardisation with ``langcodes``: deprecated or overlong language subtags
    become the preferred ones (``deu`` -> ``de``, ``tl`` -> ``fil``, ``sh`` -> ``sr_Latn``),
    and a script that is the language's usual one is dropped (``kk_Cyrl`` -> ``kk``,
    ``tt_Cyrl`` -> ``tt``; ``sr_Latn`` and ``zh_Hans`` stay)."""
    if not re.fullmatch(r"[a-z]{2,3}", lang):
        return lang, script, region  # rejected by the caller
    try:
        tag = langcodes.Language.get(langcodes.standardize_tag(lang))
    except (ValueError, LookupError):
        raise DataError(f"invalid language code {code!r}: {lang!r} is not a language subtag") from None
    if tag.language is None or tag.variants or tag.extensions or tag.private:
        return lang, script, region
    lang = tag.language
    script = script or tag.script
    if script and lang not in EXPLICIT_SCRIPT:
        likely = langcodes.Language.make(language=lang, territory=region).maximize().script
        if likely == script:
            script = None
    return lang, script, region


def canonical_lang(code: str) -> str:
    """Canonicalise a gettext/locale/BCP-47-like language code.

    ``pt-br`` -> ``pt_BR``, ``zh-hans`` -> ``zh_Hans``, ``sr@latin`` -> ``sr_Latn``,
    ``zh_CN`` -> ``zh_Hans``, ``de_DE.UTF-8`` -> ``de_DE``, ``iw`` -> ``he``,
    ``kk-cyrl`` -> ``kk``, ``be-tarask`` -> ``be_tarask`` (a variant subtag; a glibc
    modifier such as ``@valencia`` is still rejected).
    Raises DataError when the result is not a valid code.
    """
    if not isinstance(code, str) or not code.strip():
        raise DataError(f"invalid language code {code!r}: empty")
    base, _, modifier = code.strip().partition("@")
    base = base.split(".", 1)[0]  # drop the encoding: de_DE.UTF-8, zh_TW.Big5
    lang, *subtags = base.replace("-", "_").split("_")
    lang = LANGUAGE_ALIASES.get(lang.lower(), lang.lower())
    script = region = variant = None
    rest = []
    for tag in subtags:
        if len(tag) == 4 and tag.isalpha() and script is None and region is None:
            script = tag.title()
        elif (len(tag) == 2 and tag.isalpha() or len(tag) == 3 and tag.isdigit()) and region is None:
            region = tag.upper()
        elif VARIANT_RE.fullmatch(tag.lower()) and variant is None:
            variant = tag.lower()
        else:
            rest.append(tag)
    modifier = modifier.lower()
    if modifier in MODIFIER_SCRIPTS and script is None:
        script = MODIFIER_SCRIPTS[modifier]
    elif modifier and modifier not in IGNORED_MODIFIERS:
        rest.append("@" + modifier)
    lang, script, region = _standardize(lang, script, region, code)
    canonical = "_".join(t for t in (lang, script, region) if t)
    canonical = LOCALE_ALIASES.get(canonical, canonical)
    canonical = f"{canonical}_{variant}" if variant else canonical
    if rest or not LANG_RE.match(canonical):
        raise DataError(
            f"invalid language code {code!r}: expected language[_Script][_REGION] "
            f"such as 'fr', 'pt_BR', 'zh_Hans' or 'sr_Latn'"
        )
    return canonical


def is_english(code: str) -> bool:
    """True for English and its regional variants (en, en_GB, en_AU, ...)."""
    return canonical_lang(code).split("_")[0] == "en"


# --------------------------------------------------------------------------------------
# Parallel text files
# --------------------------------------------------------------------------------------


def read_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Stream a corpus text file as (1-based line number, sentence).

    Only ``\n`` ends a line (one ``\r`` before it is dropped; characters such as U+2028 that
    str.splitlines() would split on are content) and a UTF-8 byte-order mark is dropped.
    DataError naming the file and line for a missing file, invalid UTF-8 or an empty line.
    """
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a text file") from None
    with f:
        for lineno, raw in enumerate(f, 1):  # binary files split on b"\n" only
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{lineno}: invalid UTF-8 ({err.reason}) at line {lineno}") from None
            line = line.removesuffix("\n").removesuffix("\r")
            if not line.strip():
                raise DataError(f"{path}:{lineno}: empty line {lineno} (every line must hold a sentence)")
            yield lineno, line


def read_parallel(src_path: str | os.PathLike, tgt_path: str | os.PathLike) -> list[tuple[str, str]]:
    """Read two line-parallel files into (source, target) sentence pairs."""
    src_path, tgt_path = Path(src_path), Path(tgt_path)
    src_lines, tgt_lines = ([line for _, line in read_lines(p)] for p in (src_path, tgt_path))
    for path, lines in ((src_path, src_lines), (tgt_path, tgt_lines)):
        if not lines:
            raise DataError(f"{path}: file is empty")
    if len(src_lines) != len(tgt_lines):
        raise DataError(
            f"line-count mismatch: {src_path} has {len(src_lines)} lines "
            f"but {tgt_path} has {len(tgt_lines)}"
        )
    return list(zip(src_lines, tgt_lines))


def pair_file_name(split: str, src: str, tgt: str, lang: str) -> str:
    return f"{split}.{src}-{tgt}.{lang}"


def _check_code(code: str, what: str) -> None:
    """Require a valid, already canonical code; errors are prefixed with ``what``."""
    try:
        canonical = canonical_lang(code)
    except DataError as err:
        raise DataError(f"{what}: {err}") from None
    if canonical != code:
        raise DataError(f"{what}: language code {code!r} is not canonical (use {canonical!r})")


def write_parallel(
    out_dir: str | os.PathLike, split: str, src: str, tgt: str, pairs: Iterable[tuple[str, str]]
) -> tuple[Path, Path]:
    """Atomically write ``{split}.{src}-{tgt}.{src}`` and ``.{tgt}``; returns both paths."""
    out_dir = Path(out_dir)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    for code in (src, tgt):
        _check_code(code, f"pair {src}-{tgt}")
    if src == tgt:
        raise DataError(f"pair {src}-{tgt}: source and target language are the same")
    src_lines, tgt_lines = [], []
    for i, (s, t) in enumerate(pairs, 1):
        for side in (s, t):
            if not side.strip() or "\n" in side or "\r" in side:
                raise DataError(
                    f"{split} {src}-{tgt} pair {i}: sentences must be non-empty and single-line, got {side!r}"
                )
        src_lines.append(s)
        tgt_lines.append(t)
    if not src_lines:
        raise DataError(f"{split} {src}-{tgt}: no sentence pairs to write")
    paths = (out_dir / pair_file_name(split, src, tgt, src), out_dir / pair_file_name(split, src, tgt, tgt))
    atomic_write_texts({paths[0]: "\n".join(src_lines) + "\n", paths[1]: "\n".join(tgt_lines) + "\n"})
    return paths


# --------------------------------------------------------------------------------------
# Manifest and corpus
# --------------------------------------------------------------------------------------


def write_manifest(out_dir: str | os.PathLike, manifest: dict) -> Path:
    """Atomically write ``manifest.json`` into ``out_dir``."""
    path = Path(out_dir) / MANIFEST_NAME
    atomic_write_json(path, manifest)
    return path


@dataclass
class PairInfo:
    """One language pair of a corpus; ``sizes`` has a line count for every split (0 = absent)."""

    src: str
    tgt: str
    sizes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))

    @property
    def name(self) -> str:
        return f"{self.src}-{self.tgt}"


@dataclass
class Corpus:
    root: Path
    pairs: dict[str, PairInfo]
    pivot: str = "en"
    sources: list = field(default_factory=list)
    test_sets: dict = field(default_factory=dict)   # the manifest's held-out sets (multi-way builds)

    def path(self, split: str, pair: str, lang: str) -> Path:
        """Path of the ``lang`` side of ``pair`` in ``split``; DataError if the corpus lacks it."""
        info = self.pairs.get(pair)
        if info is None:
            raise DataError(f"{self.root}: no pair {pair!r} (have: {', '.join(sorted(self.pairs))})")
        if lang not in (info.src, info.tgt):
            raise DataError(f"{self.root}: pair {pair} has no language {lang!r}")
        if split not in SPLITS or not info.sizes.get(split):
            raise DataError(f"{self.root}: pair {pair} has no {split!r} split")
        return self.root / pair_file_name(split, info.src, info.tgt, lang)

    def pair_for(self, src: str, tgt: str) -> PairInfo:
        """The pair whose files serve the task src->tgt (either orientation); DataError if none."""
        for name in (f"{src}-{tgt}", f"{tgt}-{src}"):
            if name in self.pairs:
                return self.pairs[name]
        raise DataError(f"{self.root}: no parallel files for task {src}-{tgt} (looked for pairs {src}-{tgt} and {tgt}-{src})")

    def task_files(self, split: str, src: str, tgt: str) -> tuple[Path, Path]:
        """(source file, target file) for the task src->tgt; a pair file serves both directions."""
        info = self.pair_for(src, tgt)
        return self.path(split, info.name, src), self.path(split, info.name, tgt)

    def read(self, split: str, src: str, tgt: str) -> list[tuple[str, str]]:
        """Sentence pairs of the task src->tgt in ``split`` (read reversed when needed)."""
        return read_parallel(*self.task_files(split, src, tgt))

    def pairs_manifest(self) -> dict:
        """The pairs as a manifest's ``pairs`` object: name -> {src, tgt, and the size of every split}."""
        return {name: {"src": info.src, "tgt": info.tgt, **info.sizes} for name, info in self.pairs.items()}


def _count_lines(path: Path) -> int:
    data = path.read_bytes()
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def _scan(root: Path) -> dict[tuple[str, str, str], set[str]]:
    """Find ``{split}.{src}-{tgt}.{lang}`` files: {(split, src, tgt): {lang, ...}}.

    Files of another shape (binarised data, vocabularies, ...) are ignored; one that
    has this shape but bad language codes is an error.
    """
    found: dict[tuple[str, str, str], set[str]] = {}
    for path in sorted(root.iterdir()):
        parts = path.name.split(".")
        if path.name.startswith(".") or len(parts) != 3 or parts[0] not in SPLITS or "-" not in parts[1]:
            continue
        split, middle, lang = parts
        codes = middle.split("-")
        if len(codes) != 2:
            raise DataError(f"{path}: expected a name {{split}}.{{src}}-{{tgt}}.{{lang}} with one '-'")
        src, tgt = codes
        for code in (src, tgt, lang):
            _check_code(code, str(path))
        if lang not in (src, tgt):
            raise DataError(f"{path}: language {lang!r} is neither side of the pair {src}-{tgt}")
        if path.stat().st_size == 0:
            raise DataError(f"{path}: file is empty (a split without sentences has no files)")
        found.setdefault((split, src, tgt), set()).add(lang)
    return found


def _check_sizes(value, where: str) -> dict[str, int]:
    sizes = {}
    for split in SPLITS:
        n = value.get(split, 0)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise DataError(f"{where}: size of {split!r} must be a non-negative integer, got {n!r}")
        sizes[split] = n
    return sizes


def _read_manifest(root: Path) -> dict:
    path = root / MANIFEST_NAME
    manifest = read_json_object(path)
    if manifest.get("format") != CORPUS_FORMAT:
        raise DataError(f"{path}: 'format' must be {CORPUS_FORMAT!r}, got {manifest.get('format')!r}")
    if not isinstance(manifest.get("pairs"), dict) or not manifest["pairs"]:
        raise DataError(f"{path}: 'pairs' must be a non-empty object")
    return manifest


def load_corpus(root: str | os.PathLike, verify: bool = True) -> Corpus:
    """Load a corpus directory, from its manifest.json or by scanning its files.

    Checks that language codes are canonical, both sides of each pair exist for each
    split, the sides have equal line counts and, with ``verify``, that the manifest
    sizes match the files.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: corpus directory not found")
    found = _scan(root)
    manifest_path = root / MANIFEST_NAME
    manifest = _read_manifest(root) if manifest_path.exists() else None
    pairs: dict[str, PairInfo] = {}

    if manifest is None:
        if not found:
            raise DataError(f"{root}: no {MANIFEST_NAME} and no {{split}}.{{src}}-{{tgt}}.{{lang}} files")
        for (split, src, tgt), langs in sorted(found.items()):
            for lang in (src, tgt):
                if lang not in langs:
                    raise DataError(f"{root / pair_file_name(split, src, tgt, lang)}: file not found "
                                    f"(the other side of {split} {src}-{tgt} exists)")
            info = pairs.setdefault(f"{src}-{tgt}", PairInfo(src, tgt))
            counts = [_count_lines(root / pair_file_name(split, src, tgt, lang)) for lang in (src, tgt)]
            if counts[0] != counts[1]:
                raise DataError(
                    f"line-count mismatch: {root / pair_file_name(split, src, tgt, src)} has {counts[0]} "
                    f"lines but {root / pair_file_name(split, src, tgt, tgt)} has {counts[1]}"
                )
            info.sizes[split] = counts[0]
        return Corpus(root, pairs)

    pivot = manifest.get("pivot", "en")
    _check_code(pivot, f"{manifest_path}: pivot")
    expected: set[tuple[str, str, str]] = set()
    for name, entry in manifest["pairs"].items():
        where = f"{manifest_path}: pair {name!r}"
        if not isinstance(entry, dict):
            raise DataError(f"{where}: must be an object")
        src, tgt = entry.get("src"), entry.get("tgt")
        if not isinstance(src, str) or not isinstance(tgt, str):
            raise DataError(f"{where}: 'src' and 'tgt' must be language codes")
        _check_code(src, where)
        _check_code(tgt, where)
        if name != f"{src}-{tgt}":
            raise DataError(f"{where}: name must be '{src}-{tgt}' for src {src!r} and tgt {tgt!r}")
        info = pairs[name] = PairInfo(src, tgt, _check_sizes(entry, where))
        for split, size in info.sizes.items():
            if not size:
                continue
            expected.add((split, src, tgt))
            for lang in (src, tgt):
                path = root / pair_file_name(split, src, tgt, lang)
                if lang not in found.get((split, src, tgt), ()):
                    raise DataError(f"{path}: file not found (listed in {manifest_path} with {size} lines)")
                if verify and (n := _count_lines(path)) != size:
                    raise DataError(f"{path}: has {n} lines but {manifest_path} says {size}")
    for split, src, tgt in sorted(set(found) - expected):
        path = root / pair_file_name(split, src, tgt, sorted(found[split, src, tgt])[0])
        raise DataError(f"{path}: not listed in {manifest_path} (pair {src}-{tgt}, split {split})")
    sources = manifest.get("sources", [])
    test_sets = manifest.get("test_sets")
    return Corpus(root, pairs, pivot=pivot, sources=sources if isinstance(sources, list) else [],
                  test_sets=test_sets if isinstance(test_sets, dict) else {})
