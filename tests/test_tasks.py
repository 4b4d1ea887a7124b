"""Task lists from the data-bin's pairs: directions, explicit tasks, language subsets."""
import pytest

from massive_mt.config import load_config
from massive_mt.errors import ConfigError
from massive_mt.train import resolve_tasks

MANIFEST = {"pivot": "en", "pairs": {"en-fr": {"src": "en", "tgt": "fr"}, "en-de": {"src": "en", "tgt": "de"},
                                     "en-pt_BR": {"src": "en", "tgt": "pt_BR"}}}


def tasks(*overrides):
    return ["-".join(t) for t in resolve_tasks(load_config(None, list(overrides)), MANIFEST)]


def test_directions():
    assert tasks() == ["en-de", "en-fr", "en-pt_BR"]
    assert tasks("data.direction=many_to_one") == ["de-en", "fr-en", "pt_BR-en"]
    assert tasks("data.direction=many_to_many") == ["en-de", "en-fr", "en-pt_BR", "de-en", "fr-en", "pt_BR-en"]
    assert tasks("data.langs=[fr]", "data.direction=many_to_one") == ["fr-en"]
    assert tasks("data.tasks=[fr-en, en-de]") == ["fr-en", "en-de"]


def test_unknown_tasks_and_languages_are_errors():
    with pytest.raises(ConfigError, match="data.tasks"):
        tasks("data.tasks=[fr-de]")
    with pytest.raises(ConfigError, match="data.langs"):
        tasks("data.langs=[xx]")
