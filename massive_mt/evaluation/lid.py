"""Off-target rate: the share of hypotheses whose detected language is not the target.

A massively multilingual model often answers in the wrong language (in English, or in a
related language). The rate is measured with an offline language identifier:

* ``py3langid`` (default): its model ships in its wheel; 142 languages, ISO 639 codes;
* a fastText model from a local path (``--lid-model``), e.g. GlotLID or OpenLID, whose labels
  are ``__label__fra_Latn`` (FLORES-200 codes), read with the ``fasttext-numpy2`` wheel.

A detected language counts as the target when langcodes puts it within ``SAME_LANGUAGE`` of
the target's language (``no``/``nb``, ``zsm``/``ms``, ``bs``/``hr`` match; ``uk``/``ru``,
``nn``/``nb`` do not). A target the identifier cannot recognise is *not measured* (None),
never 0: e.g. py3langid lacks ``ilo`` and ``scn``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import langcodes

from massive_mt.errors import DataError

SAME_LANGUAGE = 15  # langcodes.tag_distance below this: the same language


def _language(code: str) -> str:
    """The language subtag of a corpus code (``pt_BR`` -> ``pt``) or FLORES code (``fra_Latn`` -> ``fr``)."""
    return langcodes.Language.get(code.replace("_", "-")).language


@lru_cache(maxsize=None)
def same_language(detected: str, target: str) -> bool:
    return langcodes.tag_distance(_language(detected), _language(target)) < SAME_LANGUAGE


class LanguageIdentifier:
    """``detect(texts)`` -> one label per text; ``labels``: every label it can return."""

    name: str
    labels: tuple[str, ...]

    def detect(self, texts: list[str]) -> list[str]:
        raise NotImplementedError

    def knows(self, target: str) -> bool:
        """Whether the identifier can recognise ``target`` (a corpus language) at all."""
        return any(same_language(label, target) for label in self.labels)


class Py3LangId(LanguageIdentifier):
    name = "py3langid"

    def __init__(self):
        try:
            import py3langid.langid as langid
        except ImportError:
            raise DataError("off-target rate: py3langid is not installed (pip install py3langid)") from None
        if langid.IDENTIFIER is None:
            langid.classify("")  # loads the model shipped in the wheel
        self._model = langid.IDENTIFIER
        self.labels = tuple(self._model.nb_classes)

    def detect(self, texts: list[str]) -> list[str]:
        return [self._model.classify(t)[0] for t in texts]


class FastTextId(LanguageIdentifier):
    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise DataError(f"--lid-model {path}: file not found")
        try:
            import fasttext
        except ImportError:
            raise DataError("--lid-model needs fastText: pip install fasttext-numpy2") from None
        try:
            self._model = fasttext.load_model(str(path))
        except ValueError as err:
            raise DataError(f"--lid-model {path}: not a fastText model ({err})") from None
        self.name = f"fasttext:{path.name}"
        self.labels = tuple(label.removeprefix("__label__") for label in self._model.get_labels())

    def detect(self, texts: list[str]) -> list[str]:
        labels, _ = self._model.predict([t.replace("\n", " ") for t in texts], k=1)
        return [ls[0].removeprefix("__label__") if ls else "" for ls in labels]


def identifier(lid_model: str | Path | None = None) -> LanguageIdentifier:
    return FastTextId(lid_model) if lid_model else Py3LangId()


def off_target_rate(lid: LanguageIdentifier, hyps: list[str], target: str) -> float | None:
    """Share of non-empty hypotheses not detected as ``target`` (a corpus language), in [0, 1];
    None when the identifier cannot recognise ``target`` or every hypothesis is empty."""
    texts = [h for h in hyps if h.strip()]
    if not texts or not lid.knows(target):
        return None
    detected = lid.detect(texts)
    return sum(not same_language(d, target) for d in detected if d) / len(texts)
