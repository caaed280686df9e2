"""The architecture's rule that import-linter cannot see: only the Exchange client builds InvokeCommand.

The import rules (the core never imports typer/rich, esj never imports a Microsoft client, the
sandbox and the client never import each other) are import-linter contracts in pyproject.toml,
run by scripts/test.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "esj_provision"
ALLOWED = {PACKAGE / "microsoft" / "exchange.py"}
ALLOWED_DIRS = {PACKAGE / "sandbox"}  # the server side answers InvokeCommand (and builds nextLink URLs)
# What building a request takes: the URL path and the body's envelope.
MARKERS = ("/InvokeCommand", "CmdletInput", "adminapi/")


def invoke_command_literals(path: Path) -> list[tuple[int, str]]:
    """String constants (not docstrings, not comments) that spell part of an InvokeCommand request."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and any(m in node.value for m in MARKERS)
    ]


def test_only_the_exchange_client_builds_an_invoke_command_url_or_body() -> None:
    assert len(list(PACKAGE.rglob("*.py"))) > 20  # the check reads the real package
    offenders = {
        str(path.relative_to(PACKAGE)): found
        for path in PACKAGE.rglob("*.py")
        if path not in ALLOWED and not any(d in path.parents for d in ALLOWED_DIRS)
        if (found := invoke_command_literals(path))
    }
    assert offenders == {}


def test_the_check_sees_the_exchange_client() -> None:
    """Guard against a check that cannot fail: the Exchange client itself is found by it."""
    found = invoke_command_literals(PACKAGE / "microsoft" / "exchange.py")
    assert any("InvokeCommand" in text for _, text in found)
    assert any("CmdletInput" in text for _, text in found)


def test_no_core_module_names_typer_or_rich_even_lazily() -> None:
    """import-linter sees function-level imports too; this keeps the rule visible in the test run."""
    core = [p for p in PACKAGE.rglob("*.py") if PACKAGE / "cli" not in p.parents]
    assert len(core) > 20  # the check reads the real package
    offenders = []
    for path in core:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            offenders += [f"{path.relative_to(PACKAGE)}:{node.lineno} {n}" for n in names if n.split(".")[0] in {"typer", "rich", "click"}]
    assert offenders == []
