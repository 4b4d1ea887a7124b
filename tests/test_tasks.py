"""Task lists from a manifest's pairs: directions, explicit tasks, language subsets."""
import pytest

from massive_mt.engine.config import load_config
from massive_mt.data.tasks import parse_task, resolve_tasks, task_name
from massive_mt.errors import ConfigError, DataError

MANIFEST = {"pivot": "en", "pairs": {"en-fr": {"src": "en", "tgt": "fr"}, "en-de": {"src": "en", "tgt": "de"},
                                     "en-pt_BR": {"src": "en", "tgt": "pt_BR"}}}


def tasks(*overrides, manifest=MANIFEST):
    data = load_config(None, list(overrides)).data
    return [task_name(t) for t in resolve_tasks(manifest, data.direction, data.tasks, data.langs, "the data-bin")]


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
    with pytest.raises(ConfigError, match="data.direction"):
        resolve_tasks(MANIFEST, "sideways")


def test_pairs_without_the_pivot_are_tasks_only_when_listed():
    manifest = {"pivot": "en", "pairs": {"en-fr": {"src": "en", "tgt": "fr"}, "de-fr": {"src": "de", "tgt": "fr"},
                                         "de-en": {"src": "de", "tgt": "en"}}}
    assert tasks("data.direction=many_to_many", manifest=manifest) == ["en-de", "en-fr", "de-en", "fr-en"]
    assert tasks("data.tasks=[fr-de]", manifest=manifest) == ["fr-de"]
    with pytest.raises(DataError, match="the data-bin: no language pair includes the pivot language 'ja'"):
        tasks(manifest={**manifest, "pivot": "ja"})


@pytest.mark.parametrize("name", ["enfr", "en-fr-de", "-fr", "en-"])
def test_task_names(name):
    assert parse_task("pt_BR-en") == ("pt_BR", "en") and task_name(("pt_BR", "en")) == "pt_BR-en"
    with pytest.raises(ConfigError, match=f"task '{name}'"):
        parse_task(name)
