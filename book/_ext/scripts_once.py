"""Sphinx extension: include each page script once.

sphinx-thebe 0.3.1 adds its inline configuration script (``const THEBE_JS_URL = ...``) every
time Sphinx fires ``env-before-read-docs``, which a Jupyter Book build fires more than once; the
second copy throws "Identifier 'THEBE_JS_URL' has already been declared" in every page (the
browser check of ``make test`` catches it). This drops exact duplicates before a page is written.
"""

from __future__ import annotations

from typing import Any


def _drop_duplicate_scripts(app, pagename, templatename, context: dict, doctree) -> None:
    seen: set[tuple[str, tuple]] = set()
    unique = []
    for script in context.get("script_files", []):
        attributes = tuple(sorted(getattr(script, "attributes", {}).items()))
        # the same inline script arrives once with filename None and once with "" (no file)
        key = (str(getattr(script, "filename", script) or ""), attributes)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"][:] = unique  # in place: later handlers (MathJax) append to it


def setup(app) -> dict[str, Any]:
    # early (100 < 500): html-page-context stops at the first handler that returns a template
    app.connect("html-page-context", _drop_duplicate_scripts, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
