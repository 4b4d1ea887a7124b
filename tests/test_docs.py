"""The documentation holds together: every page in docs/ is reachable from README.md, and every
relative link, every #anchor and every docs/...md#anchor the code cites points at something real."""
import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)
CODE_CITATION = re.compile(r"\b(docs/[\w./-]+\.md)(#[\w-]+)?")


def pages() -> list[Path]:
    """README.md, slurm/README.md and every Markdown file under docs/."""
    return [REPO / "README.md", REPO / "slurm" / "README.md", *sorted(DOCS.rglob("*.md"))]


def _prose(text: str) -> str:
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: link text kept, lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, title in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        s = slug(title)
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(_prose(path.read_text(encoding="utf-8")))
            if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]          # http:, https:, mailto: are not checked


def check_target(source: Path, target: str) -> str | None:
    """None when `target` (relative to `source`) resolves, else why not."""
    file_part, _, anchor = target.partition("#")
    dest = (source.parent / file_part).resolve() if file_part else source
    if not dest.exists():
        return "no such file"
    if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
        return f"no such heading in {os.path.relpath(dest, source.parent)}"
    return None


def test_slug_follows_github():
    assert slug("What the Slurm tests run, and what they do not") == "what-the-slurm-tests-run-and-what-they-do-not"
    assert slug("`ds_configs`") == "ds_configs"
    assert slug("CATS on the demo (measured)") == "cats-on-the-demo-measured"
    assert slug("Tasks, directions, sampling, micro-batches") == "tasks-directions-sampling-micro-batches"


def test_checker_reports_broken_links(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A title\n\n[ok](#a-title) [gone](missing.md) [bad](#no-title) `[code](x.md)`\n")
    problems = [check_target(page, t) for t in relative_links(page)]
    assert problems == [None, "no such file", "no such heading in page.md"]


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    problems = [f"{t}: {why}" for t in relative_links(page) if (why := check_target(page, t))]
    assert not problems, f"{page.relative_to(REPO)}: broken links:\n" + "\n".join(problems)


def test_every_docs_page_is_linked_from_the_readme():
    readme = REPO / "README.md"
    linked = {(readme.parent / t.partition("#")[0]).resolve() for t in relative_links(readme)}
    missing = [p.relative_to(REPO) for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"pages in docs/ that README.md does not link: {missing}"


def test_every_markdown_file_under_docs_is_reachable_from_the_readme():
    todo, seen = [REPO / "README.md"], set()
    while todo:
        page = todo.pop().resolve()
        if page in seen or page.suffix != ".md" or not page.exists():
            continue
        seen.add(page)
        todo += [page.parent / t.partition("#")[0] for t in relative_links(page) if t.partition("#")[0]]
    unreachable = [p.relative_to(REPO) for p in sorted(DOCS.rglob("*.md")) if p.resolve() not in seen]
    assert not unreachable, f"not reachable from README.md: {unreachable}"


def test_docs_cited_in_the_code_exist():
    problems = []
    for src in sorted((REPO / "massive_mt").rglob("*.py")):
        for file_part, anchor in CODE_CITATION.findall(src.read_text(encoding="utf-8")):
            why = check_target(REPO / "README.md", file_part + anchor)
            if why:
                problems.append(f"{src.relative_to(REPO)}: {file_part}{anchor}: {why}")
    assert not problems, "\n".join(problems)


def test_the_extension_guides_toy_method_registers_and_passes_its_test():
    """docs/extending.md's example method and its test, run as written: adding a method is one
    registered function, found by name by the reconcile dispatch."""
    import torch

    from massive_mt.reconcile import methods

    guide = (DOCS / "extending.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", guide, re.S)
    method = next(b for b in blocks if '@register("mean")' in b)
    test = next(b for b in blocks if "def test_mean" in b)
    scope = {"torch": torch, "Tensor": torch.Tensor, "F64": methods.F64, "register": methods.register,
             "Corrections": methods.Corrections, "reconcile": methods.reconcile, "make_state": methods.make_state,
             "gen": lambda seed: torch.Generator().manual_seed(seed)}
    try:
        exec(method, scope)
        assert "mean" in methods.METHODS
        exec(test, scope)
        scope["test_mean_weights_every_task_one_over_k"]()
    finally:
        methods.METHODS.pop("mean", None)
