"""The book's figures and code listings. Chapters call these; plotting code lives nowhere else.

One module per part of the book: :mod:`~deeplab_edu.viz.data`, and the network, CRF and
results figures beside it.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Any


def show_source(obj: Any, *, core: bool = True) -> Any:
    """Render the source of a package function or class in the page, so that the code the
    reader sees is the code that ran.

    Args:
        obj: a function, class or module of :mod:`deeplab_edu`.
        core: for a function, leave out its docstring and its argument checks (an ``if`` that
            only raises, a call to a ``_check``/``check_`` helper), which a chapter explains in
            prose, and say so in a comment; ``False`` shows every line.

    Returns:
        An IPython ``Code`` object (displayed with syntax highlighting in a notebook).
    """
    from IPython.display import Code  # here: IPython is there in a notebook, not a dependency

    source = inspect.getsource(obj)
    if core and inspect.isfunction(inspect.unwrap(obj)):
        source = core_source(source)
    return Code(source, language="python")


def core_source(source: str) -> str:
    """A function's source without its docstring and argument checks (see :func:`show_source`).

    Args:
        source: the source of one function (any indentation).

    Returns:
        The same lines minus the left-out statements, with one comment where the checks were.
    """
    lines = source.splitlines(keepends=True)
    tree = ast.parse(textwrap.dedent(source))
    function = tree.body[0]
    if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
        return source
    dropped: list[tuple[int, int]] = []  # 1-based line ranges, inclusive
    checks_at = None
    for index, statement in enumerate(function.body):
        docstring = (
            index == 0
            and isinstance(statement, ast.Expr)
            and isinstance(statement.value, ast.Constant)
            and isinstance(statement.value.value, str)
        )
        if docstring or _is_check(statement):
            dropped.append((statement.lineno, statement.end_lineno or statement.lineno))
            if not docstring and checks_at is None:
                checks_at = statement.lineno
    if not dropped:
        return source
    keep = []
    for number, line in enumerate(lines, start=1):
        if number == checks_at:
            indent = line[: len(line) - len(line.lstrip())]
            keep.append(f"{indent}# (argument checks left out: show_source(..., core=False))\n")
        if not any(first <= number <= last for first, last in dropped):
            keep.append(line)
    return "".join(keep)


def _is_check(statement: ast.stmt) -> bool:
    """An ``if`` whose branches only raise, or a call to a ``_check``/``check_`` helper."""
    if isinstance(statement, ast.If):
        branches = [statement.body, statement.orelse] if statement.orelse else [statement.body]
        return all(all(isinstance(s, ast.Raise) for s in branch) for branch in branches)
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call):
        name = getattr(statement.value.func, "id", getattr(statement.value.func, "attr", ""))
        return name.startswith(("_check", "check_"))
    return False
