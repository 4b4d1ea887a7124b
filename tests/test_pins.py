"""Pinned package versions that the archive stops serving (docs/corpus.md#reproducibility).

Debian serves one version of a package per suite, so a security update removes the pinned
version. These tests put a stub ``apt-get`` first on PATH that serves versions chosen by the
test (with ``.deb`` files built here by ``dpkg-deb``), and check each pin policy: ``prefer``
falls back to the served version with a warning and a manifest record, ``strict`` fails
naming both versions, ``latest`` takes the served one, stale package lists are told to run
``apt-get update``. A yanked PyPI release pinned exactly is fetched from a local index that
marks it yanked (real pip, PEP 592).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import polib
import pytest

from massive_mt.cli import main
from massive_mt.data.wheels import download_wheels
from massive_mt.data.sources import registry
from massive_mt.data.sources.build import build_sources_corpus
from massive_mt.data.sources.fetch import fetch
from massive_mt.data.sources.registry import LC_MESSAGES, Source, debian_pins
from massive_mt.errors import DataError

PKG = "massive-mt-stub-l10n"
PINNED = "1.2-1~deb12u1"        # a "security" version the archive has replaced
SERVED = "1.2-1~deb12u2"        # what the archive serves now (the candidate)
OLD = "1.0-1"                   # the point release's version

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (a Debian system)")

STUB = textwrap.dedent(r'''
    #!{python}
    """apt-get stub: serves the versions in $STUB_SERVED (json {{package: [versions, candidate first]}})
    from the .debs in $STUB_POOL, like `apt-get download [--print-uris] pkg[=version]...`."""
    import json, os, shutil, sys
    served = json.load(open(os.environ["STUB_SERVED"]))
    pool = os.environ["STUB_POOL"]
    with open(os.environ["STUB_LOG"], "a") as log:
        log.write(" ".join(sys.argv[1:]) + "\n")
    args = sys.argv[1:]
    assert args[0] == "download", args
    uris = "--print-uris" in args
    found, errors = [], []
    for spec in [a for a in args[1:] if not a.startswith("-")]:
        name, _, version = spec.partition("=")
        if name not in served:
            errors.append(f"E: Unable to locate package {{name}}")
        elif version and version not in served[name]:
            errors.append(f"E: Version '{{version}}' for '{{name}}' was not found")
        else:
            found.append(f"{{name}}_{{version or served[name][0]}}_all.deb")
    if uris:
        for f in found:
            print(f"'http://stub/pool/{{f}}' {{f}} 1 SHA256:0")
    elif not errors:
        for f in found:
            shutil.copy(os.path.join(pool, f), f)
    for e in errors:
        print(e, file=sys.stderr)
    sys.exit(100 if errors else 0)
''').lstrip()


def _mo(path: Path, n: int) -> None:
    po = polib.POFile()
    po.metadata = {"Content-Type": "text/plain; charset=UTF-8"}
    for i in range(n):
        po.append(polib.POEntry(msgid=f"Open the settings panel number {i}",
                                msgstr=f"Öffne das Einstellungsfeld Nummer {i}"))
    path.parent.mkdir(parents=True, exist_ok=True)
    po.save_as_mofile(str(path))


def _deb(pool: Path, version: str, pairs: int = 40) -> Path:
    root = pool / f"build-{version}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {PKG}\nVersion: {version}\nArchitecture: all\nMaintainer: test <t@example.org>\n"
        "Description: test catalogue\n")
    _mo(root / "usr/share/locale/de/LC_MESSAGES/stub.mo", pairs)
    out = pool / f"{PKG}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(out)], check=True,
                   capture_output=True)
    shutil.rmtree(root)
    return out


@pytest.fixture
def archive(tmp_path, monkeypatch):
    """A stub apt-get on PATH; ``archive(versions)`` sets what it serves (candidate first)."""
    pool, bin_dir = tmp_path / "pool", tmp_path / "bin"
    pool.mkdir()
    bin_dir.mkdir()
    for v in (PINNED, SERVED, OLD, "3.0-1"):
        _deb(pool, v)
    stub = bin_dir / "apt-get"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    served, calls = tmp_path / "served.json", tmp_path / "apt-calls.log"
    calls.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("STUB_SERVED", str(served))
    monkeypatch.setenv("STUB_POOL", str(pool))
    monkeypatch.setenv("STUB_LOG", str(calls))

    def serve(*versions: str) -> Path:
        served.write_text(json.dumps({PKG: list(versions)}))
        return calls
    return serve


SOURCE = Source("stub", "deb", (PKG,), "gettext", "test", {"pattern": LC_MESSAGES})


def test_prefer_falls_back_to_the_served_version_with_a_warning(archive, tmp_path, caplog):
    archive(SERVED, OLD)
    with caplog.at_level(logging.WARNING):
        [f] = fetch(SOURCE, {PKG: PINNED}, tmp_path / "cache")
    assert (f.package, f.version, f.pinned) == (PKG, SERVED, PINNED)
    assert f.deviation == {"package": PKG, "pinned": PINNED, "used": SERVED}
    assert f.sha256 == hashlib.sha256(f.path.read_bytes()).hexdigest()
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{PKG}={PINNED} is no longer served (the archive serves {SERVED})" in warning


def test_prefer_takes_the_pin_where_it_is_served(archive, tmp_path):
    archive(SERVED, PINNED, OLD)
    [f] = fetch(SOURCE, {PKG: PINNED}, tmp_path / "cache")
    assert (f.version, f.deviation) == (PINNED, None)


def test_strict_fails_naming_both_versions(archive, tmp_path):
    archive(SERVED, OLD)
    with pytest.raises(DataError) as err:
        fetch(SOURCE, {PKG: PINNED}, tmp_path / "cache", policy="strict")
    msg = str(err.value)
    assert f"{PKG}={PINNED} is no longer served (the archive serves {SERVED})" in msg
    assert "--pins prefer" in msg and "--from-dir" in msg
    assert not list((tmp_path / "cache").rglob("*.deb"))  # nothing downloaded


def test_stale_package_lists_say_apt_get_update(archive, tmp_path, caplog):
    archive(OLD)  # the lists predate the pinned version
    with pytest.raises(DataError, match=rf"{PKG}=3.0-1 is newer than anything the package lists offer "
                                        rf"\(candidate {OLD}\).*run 'apt-get update' \(as root\)"):
        fetch(SOURCE, {PKG: "3.0-1"}, tmp_path / "cache", policy="strict")
    with caplog.at_level(logging.WARNING):
        [f] = fetch(SOURCE, {PKG: "3.0-1"}, tmp_path / "cache")
    assert f.version == OLD and "apt-get update" in caplog.text


def test_latest_takes_the_served_version(archive, tmp_path):
    archive(SERVED, PINNED)
    [f] = fetch(SOURCE, {PKG: PINNED}, tmp_path / "cache", policy="latest")
    assert f.version == SERVED and f.deviation["used"] == SERVED


def test_a_cached_pinned_file_needs_no_package_lists(archive, tmp_path):
    calls = archive(PINNED)
    fetch(SOURCE, {PKG: PINNED}, tmp_path / "cache")
    archive()  # nothing served any more
    calls.write_text("")
    [f] = fetch(SOURCE, {PKG: PINNED}, tmp_path / "cache")
    assert f.version == PINNED and calls.read_text() == ""


def test_unknown_policy_is_refused(archive, tmp_path):
    archive(SERVED)
    with pytest.raises(DataError, match="pin policy 'newest': expected one of prefer, strict, latest"):
        fetch(SOURCE, {PKG: PINNED}, tmp_path / "cache", policy="newest")


def test_build_records_the_deviation_and_update_pins_rewrites_the_file(archive, tmp_path, monkeypatch, capsys):
    archive(SERVED, OLD)
    monkeypatch.setitem(registry.SOURCES, "stub", SOURCE)
    pins = tmp_path / "pins.txt"
    pins.write_text(f"# test pins\n{PKG}={PINNED}\nother-package=9.9  # kept\n")
    manifest = build_sources_corpus(tmp_path / "corpus", ["stub"], cache_dir=tmp_path / "cache", pins_file=pins,
                                    min_pairs=10, split="hash", workers=1, progress=False)
    assert manifest["pins"]["policy"] == "prefer"
    assert manifest["pins"]["deviations"] == [{"package": PKG, "pinned": PINNED, "used": SERVED}]
    [record] = manifest["sources"][0]["packages"]
    assert (record["version"], record["pinned"]) == (SERVED, PINNED)
    assert pins.read_text() == f"# test pins\n{PKG}={PINNED}\nother-package=9.9  # kept\n"  # not asked to

    rc = main(["build-corpus", "--sources", "stub", "--out", str(tmp_path / "corpus2"), "--package-cache",
               str(tmp_path / "cache"), "--pins-file", str(pins), "--update-pins", "--min-pairs", "10",
               "--split", "hash", "--workers", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert f"pinned {PKG}={PINNED}, used {SERVED} (--pins prefer)" in out
    assert debian_pins(pins) == {PKG: SERVED, "other-package": "9.9"}
    assert pins.read_text().startswith("# test pins\n")

    rc = main(["build-corpus", "--sources", "stub", "--out", str(tmp_path / "corpus3"), "--package-cache",
               str(tmp_path / "cache2"), "--pins-file", str(pins), "--pins", "strict", "--min-pairs", "10",
               "--split", "hash", "--workers", "1"])
    assert rc == 0  # the rewritten pins are served: strict passes


def test_pins_options_need_sources(tmp_path, capsys):
    assert main(["build-corpus", "--out", str(tmp_path / "c"), "--pins", "strict"]) != 0
    assert "--pins/--pins-file/--update-pins govern Debian packages: they need --sources" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# PyPI: a yanked release pinned exactly
# --------------------------------------------------------------------------------------


def _wheel(folder: Path, name: str, version: str) -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    dist = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/__init__.py", "")
        z.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nLicense: MIT\n")
        z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}/RECORD", "")
    return path


@pytest.fixture
def yanked_index(tmp_path, monkeypatch):
    """A PEP 503 index on disk: stubpkg 1.0 (yanked) and 1.1; pip reads nothing else."""
    files = tmp_path / "files"
    files.mkdir()
    links = []
    for version, yanked in (("1.0", True), ("1.1", False)):
        w = _wheel(files, "stubpkg", version)
        attr = ' data-yanked="broken build"' if yanked else ""
        links.append(f'<a href="{w.as_uri()}"{attr}>{w.name}</a>')
    (tmp_path / "simple" / "stubpkg").mkdir(parents=True)
    (tmp_path / "simple" / "stubpkg" / "index.html").write_text("<html><body>" + "".join(links) + "</body></html>")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "simple").as_uri())
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    return tmp_path


def test_an_exact_pin_of_a_yanked_release_is_still_fetched(yanked_index):
    [path] = download_wheels(["stubpkg==1.0"], yanked_index / "cache")
    assert path.name == "stubpkg-1.0-py3-none-any.whl"


def test_a_pin_the_index_does_not_have_fails_naming_it(yanked_index):
    with pytest.raises(DataError, match=r"pip download stubpkg==2\.0 failed \(exit 1\)"):
        download_wheels(["stubpkg==2.0"], yanked_index / "cache")
