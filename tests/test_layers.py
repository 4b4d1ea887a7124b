"""The package's shape (docs/architecture.md): the import contracts hold (lint-imports, imports
inside functions counted), and no module grows past MAX_LINES without saying why in its docstring."""
import ast
import subprocess
import sys

from conftest import REPO

MAX_LINES = 450


def test_import_contracts_hold():
    p = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                        "sys.exit(lint_imports_command())", "--no-cache"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "2 kept, 0 broken" in p.stdout, p.stdout[-2000:]


def test_long_modules_say_why():
    unexplained = []
    for path in sorted((REPO / "massive_mt").rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > MAX_LINES and "Length:" not in (ast.get_docstring(ast.parse(text)) or ""):
            unexplained.append(f"{path.relative_to(REPO)} ({len(text.splitlines())} lines)")
    assert not unexplained, f"over {MAX_LINES} lines without a 'Length:' reason in the docstring: {unexplained}"
