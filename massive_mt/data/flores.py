"""FLORES-200 and FLORES+ from a local directory: the multi-way benchmark the field reports.

Two layouts are read, each one sentence per line, line i of every language the same sentence:

* FLORES-200 (the NLLB release, ``flores200_dataset``): ``dev/eng_Latn.dev``,
  ``devtest/eng_Latn.devtest``;
* FLORES+ as per-language text files: ``dev/dev.eng_Latn``, ``devtest/devtest.eng_Latn``
  (FLORES+ renamed a few languages, e.g. ``cmn_Hans`` for NLLB's ``zho_Hans``: both names are
  looked for).

Languages are found through the NLLB/FLORES-200 code map (``data.language_codes``).
Nothing is downloaded (docs/evaluation.md#flores-200 says where to get the data).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from massive_mt.data.corpus import read_lines
from massive_mt.data.language_codes import nllb_code
from massive_mt.errors import DataError

SPLITS = ("dev", "devtest")
# FLORES+ names for NLLB/FLORES-200 codes it renamed
FLORES_PLUS_NAMES = {"zho_Hans": ("cmn_Hans",), "zho_Hant": ("cmn_Hant",)}


@dataclass(frozen=True)
class Flores:
    root: Path
    split: str

    def __post_init__(self):
        if self.split not in SPLITS:
            raise DataError(f"--split {self.split!r}: FLORES has {', '.join(SPLITS)}")
        if not (self.root / self.split).is_dir():
            raise DataError(f"{self.root}: no {self.split}/ folder (expected the FLORES-200 release layout "
                            f"{self.split}/eng_Latn.{self.split} or FLORES+ {self.split}/{self.split}.eng_Latn)")

    def path(self, code: str) -> Path | None:
        """The file of a FLORES code in either layout, or None."""
        folder = self.root / self.split
        for name in (code, *FLORES_PLUS_NAMES.get(code, ())):
            for candidate in (folder / f"{name}.{self.split}", folder / f"{self.split}.{name}"):
                if candidate.is_file():
                    return candidate
        return None

    def file_of(self, lang: str) -> tuple[Path | None, str]:
        """(file, reason) for a corpus language: the file, or None and why it has none."""
        code = nllb_code(lang)
        if code is None:
            return None, f"{lang} has no FLORES-200 code"
        path = self.path(code)
        if path is None:
            return None, f"{lang} ({code}) has no file in {self.root / self.split}"
        return path, ""

    @staticmethod
    def read(path: Path) -> list[str]:
        return [line for _, line in read_lines(path)]  # DataError naming file and line: bad UTF-8, empty line

    def rows(self, tasks: list[tuple[str, str, str]]):
        """For (task, src, tgt) triples: ({task: [(source, reference)]}, {task: (src file, ref file)},
        {task: reason} for the tasks that cannot be scored). Every language's file has as many
        lines as the others (the benchmark is multi-way); a file that differs is named."""
        rows, files, unscored, lengths = {}, {}, {}, {}
        read = {}                                      # each file once: the source side repeats across tasks
        for task, src, tgt in tasks:
            (src_path, why_src), (ref_path, why_ref) = self.file_of(src), self.file_of(tgt)
            if src_path is None or ref_path is None:
                unscored[task] = "; ".join(r for r in (why_src, why_ref) if r)
                continue
            for path in (src_path, ref_path):
                if path not in read:
                    read[path] = self.read(path)
            sources, refs = read[src_path], read[ref_path]
            for path, lines in ((src_path, sources), (ref_path, refs)):
                lengths[path] = len(lines)
            rows[task] = list(zip(sources, refs))
            files[task] = (src_path, ref_path)
        if len(set(lengths.values())) > 1:
            common = max(set(lengths.values()), key=list(lengths.values()).count)
            odd = [f"{p} ({n} lines)" for p, n in lengths.items() if n != common]
            raise DataError(f"FLORES files differ in length ({common} lines expected): {', '.join(odd)}")
        return rows, files, unscored
