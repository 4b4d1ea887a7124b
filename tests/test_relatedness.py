"""`massive-mt relatedness`: the Mantel test, and the report on a synthetic telemetry file written
by the trainer's own ReconcileTelemetry, with real language codes (one URIEL lacks)."""
import json
import sys

import numpy as np
import pytest
import torch
from scipy import stats

from massive_mt import cli
from massive_mt.errors import DataError
from massive_mt.engine.metrics import ReconcileTelemetry
from massive_mt.reconcile import make_state, reconcile
from massive_mt.experiments.relatedness import INSTALL, TypologyMissing, iso639_3, mantel, task_languages, uriel_distances


def distance_matrix(rng, n):
    x = rng.normal(size=(n, 2))
    return np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))


@pytest.mark.parametrize("alternative", ["less", "two-sided"])
def test_mantel_p_is_uniform_on_unrelated_matrices(alternative):
    rng = np.random.default_rng(3)
    ps = [mantel(distance_matrix(rng, 8), distance_matrix(rng, 8), permutations=199, seed=k,
                 alternative=alternative)[1] for k in range(200)]
    assert stats.kstest(ps, "uniform").pvalue > 0.01
    # and the rejection rate at 0.05 within 3 binomial standard deviations of 10 in 200
    assert abs(sum(p < 0.05 for p in ps) - 10) <= 3 * np.sqrt(200 * 0.05 * 0.95)


def test_mantel_one_sided_looks_for_falling_similarity():
    """The default alternative is rho < 0: a weak negative relation gets about half the two-sided
    p-value, a positive one (similarity rising with distance) a p-value near 1; the counts are the
    permutations at or below the observed rho, exactly."""
    rng = np.random.default_rng(7)
    d = distance_matrix(rng, 10)
    noise = rng.normal(scale=10.0, size=d.shape)
    sim = -d + (noise + noise.T) / 2
    rho, p_less, _ = mantel(sim, d, permutations=999, seed=1)
    _, p_two, _ = mantel(sim, d, permutations=999, seed=1, alternative="two-sided")
    assert rho < 0 and p_less < p_two and p_less == pytest.approx(p_two / 2, abs=0.02), (rho, p_less, p_two)
    rho_up, p_up, _ = mantel(-sim, d, permutations=999, seed=1)
    assert rho_up == pytest.approx(-rho) and p_up > 0.9
    assert mantel(-sim, d, permutations=999, seed=1, alternative="greater")[1] == pytest.approx(p_less)
    # by hand: the same permutations as mantel draws them
    iu = np.triu_indices(10, k=1)
    perm_rng = np.random.default_rng(1)
    rhos = [stats.spearmanr(sim[iu], d[np.ix_(q, q)][iu]).statistic
            for q in (perm_rng.permutation(10) for _ in range(999))]
    assert p_less == pytest.approx((1 + sum(r <= rho + 1e-12 for r in rhos)) / 1000)
    with pytest.raises(ValueError, match="alternative"):
        mantel(sim, d, alternative="below")


def test_mantel_p_is_small_on_related_matrices_and_skips_missing_pairs():
    rng = np.random.default_rng(4)
    a = distance_matrix(rng, 9)
    b = a + rng.normal(scale=0.2, size=a.shape)
    b = (b + b.T) / 2
    rho, p, n = mantel(-a, b, permutations=499)
    assert rho < -0.8 and p <= 0.01 and n == 36
    b[0, 1] = b[1, 0] = np.nan
    b[2, 3] = b[3, 2] = b[4, 5] = b[5, 4] = 7.0                # ties
    assert mantel(-a, b, permutations=99)[2] == 35
    iu = np.triu_indices(9, k=1)
    ok = np.isfinite(b[iu])
    assert mantel(-a, b, permutations=9)[0] == pytest.approx(stats.spearmanr(-a[iu][ok], b[iu][ok]).statistic)


def test_task_languages():
    assert task_languages(["en-fr", "en-pt_BR"]) == ["fr", "pt_BR"]
    assert task_languages(["fr-en", "ja-en"]) == ["fr", "ja"]
    with pytest.raises(DataError, match="both directions"):
        task_languages(["en-fr", "fr-en", "en-de"])
    with pytest.raises(DataError, match="no pivot"):
        task_languages(["en-fr", "de-ja"])


LANGS = ["fr", "de", "es", "ru", "ja", "pt_BR", "zh_Hans", "sr_Latn", "ast", "tok"]


def write_telemetry(run, langs, encoder_cos, decoder_cos, steps=6):
    """reconcile.jsonl as the trainer writes it: every step sees every task, the encoder's Gram
    has ten times the decoder's norm (so the whole model follows the encoder)."""
    tasks = [f"en-{x}" for x in langs]
    tel = ReconcileTelemetry(run, True, tasks, ["encoder", "decoder"], interval=1)
    enc, dec = torch.tensor(encoder_cos), torch.tensor(decoder_cos)
    ids = list(range(len(tasks)))
    for step in range(steps):
        grams = torch.stack([10 * enc, dec])
        _, stats = reconcile("sum", grams, ids, make_state("sum", 2, len(tasks)), torch.Generator())
        stats.grams = grams
        tel.add(step, stats)
    tel.close()
    return tasks


@pytest.mark.slow
def test_relatedness_report_on_synthetic_telemetry(tmp_path):
    isos = tuple(iso639_3(x) for x in LANGS)
    assert isos[5:8] == ("por", "zho", "srp")
    geo, missing = uriel_distances(isos)["geographic"]
    # URIEL's distances as known: French is nearer Spanish/German than Japanese
    gen = uriel_distances(isos)["genetic"][0]
    assert gen[0, 2] < gen[0, 4] and geo[0, 1] < geo[0, 4]
    assert missing == {"tok": "not in URIEL"}
    # encoder gradients as similar as the languages are near; decoder's unrelated
    rng = np.random.default_rng(0)
    cos = 0.6 - np.nan_to_num(geo, nan=0.3) + rng.normal(scale=0.01, size=geo.shape)
    cos = (cos + cos.T) / 2
    noise = rng.uniform(-0.3, 0.3, size=geo.shape)
    noise = (noise + noise.T) / 2
    np.fill_diagonal(cos, 1.0)
    np.fill_diagonal(noise, 1.0)
    run = tmp_path / "run"
    write_telemetry(run, LANGS, cos, noise)
    rc = cli.main(["relatedness", str(run), "--permutations", "199", "--spans", "3", "--group", "encoder"])
    assert rc == 0
    res = json.loads((run / "relatedness" / "relatedness.json").read_text())
    assert res["iso639_3"][-1] == "tok" and len(res["spans"]) == 3 and list(res["groups"]) == ["model", "encoder", "decoder"]
    for kind in ("genetic", "syntactic", "geographic"):        # listed, not dropped
        assert {"language": "tok", "iso639_3": "tok", "reason": "not in URIEL"} in res["missing"][kind]
    assert {"language": "ast", "iso639_3": "ast", "reason": "no syntactic features"} in res["missing"]["syntactic"]
    assert res["alternative"] == "less" and res["pairs_total"] == 45
    for g in ("model", "encoder"):
        for span in res["groups"][g]:
            e = span["geographic"]
            assert e["rho"] < -0.9 and e["p"] <= 0.01 and e["pairs"] == 36 and e["dropped"] == 9, (g, span)
    assert res["families"][0] == "Indo-European" and res["families"][4] == "Japonic"
    md = (run / "relatedness" / "relatedness.md").read_text()
    assert "tok (tok: not in URIEL)" in md and "ast (ast: no syntactic features)" in md and "| decoder |" in md
    assert "one-sided (rho < 0" in md and "measured and dropped of 45" in md
    assert "Pairs measured / dropped: steps 1-2: 36 / 9" in md, md          # tok's 9 pairs
    # ast has no syntactic features: 8 more pairs dropped there
    assert "Pairs measured / dropped: steps 1-2: 28 / 17" in md, md
    assert cli.main(["relatedness", str(run), "--permutations", "199", "--two-sided", "--out", str(tmp_path / "two")]) == 0
    two = json.loads((tmp_path / "two" / "relatedness.json").read_text())
    assert two["alternative"] == "two-sided" and "two-sided Mantel" in (tmp_path / "two" / "relatedness.md").read_text()
    dec = [(a["geographic"]["rho"], a["geographic"]["p"], b["geographic"]["p"])
           for a, b in zip(res["groups"]["decoder"], two["groups"]["decoder"])]
    for rho, p_one, p_two in dec:                     # the same permutations: one-sided <= two-sided when rho < 0
        assert (p_one <= p_two) if rho < 0 else (p_one >= p_two / 2), (rho, p_one, p_two)
    assert (run / "relatedness" / "relatedness_encoder.png").stat().st_size > 10_000


def test_missing_urielplus_says_how_to_install(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    write_telemetry(run, ["fr", "de", "ja"], np.eye(3), np.eye(3), steps=1)
    monkeypatch.setitem(sys.modules, "urielplus", None)
    with pytest.raises(TypologyMissing, match=r"pip install massive_mt\[typology\]"):
        iso639_3("fr")
    assert cli.main(["relatedness", str(run)]) == 2
    assert INSTALL in capsys.readouterr().err
    assert cli.main(["relatedness", str(run), "--permutations", "0"]) == 2
    assert "--permutations must be >= 1" in capsys.readouterr().err
    assert cli.main(["relatedness", str(run), "--group", "nope"]) == 2
    assert "--group 'nope': not logged; groups: model, encoder, decoder" in capsys.readouterr().err
