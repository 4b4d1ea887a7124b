"""The scores the field reads: FLORES-200/FLORES+ layouts, chrF++ and spBLEU against sacrebleu's
own command line, the off-target rate with py3langid and with a fastText model trained here."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm

from massive_mt.data.corpus import load_corpus
from massive_mt.errors import DataError
from massive_mt.data.flores import Flores
from massive_mt.evaluation.lid import FastTextId, identifier, off_target_rate, same_language
from massive_mt.scoring import SPM_NAME, SpBleu, _no_download, extra_scores, score

SENTS = {
    "eng_Latn": ["The cat sleeps on the warm sofa.", "Open the settings to change the language.",
                 "Rain is expected tomorrow in the north.", "She bought three apples at the market.",
                 "The museum opens at nine in the morning."],
    "fra_Latn": ["Le chat dort sur le canapé chaud.", "Ouvrez les paramètres pour changer la langue.",
                 "De la pluie est prévue demain dans le nord.", "Elle a acheté trois pommes au marché.",
                 "Le musée ouvre à neuf heures du matin."],
    "deu_Latn": ["Die Katze schläft auf dem warmen Sofa.", "Öffnen Sie die Einstellungen, um die Sprache zu ändern.",
                 "Morgen wird im Norden Regen erwartet.", "Sie kaufte drei Äpfel auf dem Markt.",
                 "Das Museum öffnet um neun Uhr morgens."],
}


def flores_dir(root: Path, layout: str, split: str = "devtest") -> Path:
    (root / split).mkdir(parents=True)
    for code, lines in SENTS.items():
        name = f"{code}.{split}" if layout == "flores200" else f"{split}.{code}"
        (root / split / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.mark.parametrize("layout", ["flores200", "flores+"])
def test_flores_layouts(tmp_path, layout):
    root = flores_dir(tmp_path / layout, layout)
    flores = Flores(root, "devtest")
    rows, files, unscored = flores.rows([("fr-en", "fr", "en"), ("en-de", "en", "de"), ("sr_Latn-en", "sr_Latn", "en"),
                                         ("ja-en", "ja", "en")])
    assert rows["fr-en"][1] == (SENTS["fra_Latn"][1], SENTS["eng_Latn"][1]) and len(rows["en-de"]) == 5
    assert files["fr-en"][0].name in ("fra_Latn.devtest", "devtest.fra_Latn")
    assert unscored == {"sr_Latn-en": "sr_Latn has no FLORES-200 code",
                        "ja-en": f"ja (jpn_Jpan) has no file in {root / 'devtest'}"}


def test_flores_bad_input(tmp_path):
    root = flores_dir(tmp_path / "f", "flores200")
    with pytest.raises(DataError, match=r"no dev/ folder"):
        Flores(root, "dev")
    with pytest.raises(DataError, match=r"--split 'test'"):
        Flores(root, "test")
    (root / "devtest" / "deu_Latn.devtest").write_text("\n".join(SENTS["deu_Latn"][:4]) + "\n")
    with pytest.raises(DataError, match=r"FLORES files differ in length \(5 lines expected\): .*deu_Latn.devtest \(4 lines\)"):
        Flores(root, "devtest").rows([("fr-en", "fr", "en"), ("de-en", "de", "en")])
    (root / "devtest" / "deu_Latn.devtest").write_text("a\n\nb\n")
    with pytest.raises(DataError, match=r"deu_Latn.devtest:2"):
        Flores(root, "devtest").rows([("de-en", "de", "en")])


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("spm")
    lines = [s for v in SENTS.values() for s in v] * 20
    (d / "train.txt").write_text("\n".join(lines) + "\n")
    spm.SentencePieceTrainer.train(input=str(d / "train.txt"), model_prefix=str(d / "m"), vocab_size=120,
                                   minloglevel=2)
    return d / "m.model"


def test_chrf_plus_plus_and_spbleu_equal_sacrebleus_command_line(tmp_path, spm_model):
    refs = SENTS["eng_Latn"]
    hyps = ["The cat sleeps on a warm sofa.", "Open settings to change language.", "Rain tomorrow in the north.",
            "She bought apples at the market.", "The museum opens at nine."]
    (tmp_path / "ref").write_text("\n".join(refs) + "\n")
    (tmp_path / "hyp").write_text("\n".join(hyps) + "\n")
    scores, sigs = extra_scores(hyps, refs, SpBleu(spm_model, tmp_path / "run"))
    bleu, chrf, _, _ = score(hyps, refs, "en")
    cli_home = tmp_path / "cli"
    (cli_home / "models").mkdir(parents=True)
    (cli_home / "models" / SPM_NAME).write_bytes(spm_model.read_bytes())
    env = dict(os.environ, SACREBLEU=str(cli_home))

    def cli(*args) -> float:
        out = subprocess.run([sys.executable, "-m", "sacrebleu", str(tmp_path / "ref"), "-i", str(tmp_path / "hyp"),
                              "-b", "-w", "6", *args], env=env, capture_output=True, text=True, check=True)
        return float(out.stdout)
    assert round(scores["chrf_pp"], 6) == cli("-m", "chrf", "--chrf-word-order", "2")
    assert round(scores["spbleu"], 6) == cli("-m", "bleu", "--tokenize", "flores200")
    assert round(chrf, 6) == cli("-m", "chrf")
    assert scores["spbleu"] != bleu
    assert "tok:flores200" in sigs["spbleu"] and sigs["spbleu"].endswith(
        "spm-sha256:" + __import__("hashlib").sha256(spm_model.read_bytes()).hexdigest())
    assert "nw:2" in sigs["chrf_pp"]


def test_spbleu_never_downloads(tmp_path):
    import sacrebleu

    with pytest.raises(DataError, match="sacrebleu tried to download"), _no_download(tmp_path):
        sacrebleu.BLEU(tokenize="flores200")
    with pytest.raises(DataError, match="--spm-model .*: file not found"):
        SpBleu(tmp_path / "missing.model", tmp_path)
    (tmp_path / "bad.model").write_text("not a model")
    with pytest.raises(DataError, match="not a SentencePiece model"):
        SpBleu(tmp_path / "bad.model", tmp_path)


def test_off_target_rate_with_py3langid():
    lid = identifier()
    hyps = SENTS["fra_Latn"][:3] + SENTS["eng_Latn"][:1] + SENTS["deu_Latn"][:1]   # 2 of 5 not French
    assert off_target_rate(lid, hyps, "fr") == pytest.approx(2 / 5)
    assert off_target_rate(lid, SENTS["deu_Latn"], "de") == 0.0
    assert off_target_rate(lid, hyps, "ilo") is None        # py3langid lacks Ilocano: not measured, not 0
    assert off_target_rate(lid, ["", " "], "fr") is None
    assert same_language("no", "nb") and same_language("zsm", "ms") and not same_language("uk", "ru")


def test_off_target_rate_with_a_fasttext_model_trained_on_corpus_lines(tmp_path, real_corpus):
    import fasttext

    corpus = load_corpus(real_corpus)
    codes = {"de": "deu_Latn", "fr": "fra_Latn", "ru": "rus_Cyrl", "en": "eng_Latn"}
    train, held = [], {}
    rng = random.Random(0)
    for lang in ("de", "fr", "ru"):
        pairs = corpus.read("train", "en", lang)
        rng.shuffle(pairs)
        cut = min(600, len(pairs) * 3 // 4)
        train += [f"__label__{codes[lang]} {x}" for _, x in pairs[:cut]]
        train += [f"__label__eng_Latn {e}" for e, _ in pairs[:cut // 3]]
        held[lang] = [x for _, x in pairs[cut:cut + 100] if len(x.split()) >= 3]
        assert len(held[lang]) >= 20
    rng.shuffle(train)
    (tmp_path / "lid.txt").write_text("\n".join(train) + "\n")
    fasttext.train_supervised(str(tmp_path / "lid.txt"), epoch=20, minn=2, maxn=4, dim=16, thread=1,
                              seed=1, verbose=0).save_model(str(tmp_path / "lid.bin"))
    lid = identifier(tmp_path / "lid.bin")
    assert isinstance(lid, FastTextId) and set(lid.labels) == set(codes.values())
    assert off_target_rate(lid, held["ru"], "ru") <= 0.05            # Cyrillic: no confusion with the others
    assert off_target_rate(lid, held["de"], "ru") >= 0.95
    assert off_target_rate(lid, held["fr"], "ja") is None            # not among its labels
    with pytest.raises(DataError, match="--lid-model .*: file not found"):
        identifier(tmp_path / "nope.bin")
