"""The browser check must fail on what a reader would see as broken: proven on small fixture
sites written here (a good one, and one broken thing at a time)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools import browser_check

REPO = Path(__file__).resolve().parents[1]
MATHJAX = REPO / ".cache" / "static" / "mathjax"
MATH_PAGE = """<html><head>
<link rel="stylesheet" href="https://example.org/outside.css">
<script>window.MathJax = {{tex: {{inlineMath: [['\\\\(', '\\\\)']]}}}};</script>
{mathjax}
</head><body><h1 id="top">Fixture</h1>
<p>Inline math: <span class="math">\\(E(x) = \\sum_i \\theta_i(x_i)\\)</span></p>
<div class="math">\\[ w_1 \\exp(-x^2) \\]</div>
<a href="other.html#section">other</a> <a href="#top">top</a> <a href="https://example.org/">out</a>
<img src="{image}">
{extra}
</body></html>"""


@pytest.fixture(scope="module")
def chromium() -> str:
    path = browser_check.find_chromium()
    mandatory = os.environ.get("DEEPLAB_EDU_BROWSER", "").lower() == "required"
    if path is None or not MATHJAX.is_dir():
        reason = "Chromium not installed" if path is None else "MathJax not fetched (make test)"
        if mandatory:
            pytest.fail(f"DEEPLAB_EDU_BROWSER=required but {reason}")
        pytest.skip(reason)
    return path


def make_site(root: Path, *, mathjax: bool = True, image: str = "dot.png", extra: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(MATHJAX, root / "mathjax") if MATHJAX.is_dir() and mathjax else None
    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(root / "dot.png")
    script = '<script src="mathjax/tex-chtml.js"></script>' if mathjax else ""
    page = MATH_PAGE.format(mathjax=script, image=image, extra=extra)
    (root / "index.html").write_text(page)
    (root / "other.html").write_text('<html><body><h2 id="section">S</h2></body></html>')
    return root


def test_links_are_checked_without_a_browser(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", mathjax=False)
    assert browser_check.check_links(site, site / "index.html") == []
    (site / "other.html").write_text("<html><body>no anchor here</body></html>")
    assert browser_check.check_links(site, site / "index.html") == [
        "index.html: broken anchor 'other.html#section'"
    ]
    (site / "other.html").unlink()
    assert browser_check.check_links(site, site / "index.html") == [
        "index.html: broken link 'other.html#section'"
    ]


def test_good_site_passes(tmp_path: Path, chromium: str) -> None:
    shot = tmp_path / "shot.png"
    report = browser_check.check_site(
        make_site(tmp_path / "site"), {"index.html": shot}, chromium=chromium
    )
    assert report.failures == []
    assert report.ok and report.pages == 2
    assert "example.org" in report.outside  # listed, not failed
    assert shot.stat().st_size > 1000


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"mathjax": False}, "raw math '\\\\('"),
        ({"image": "missing.png"}, "broken image 'missing.png'"),
        ({"extra": "<script>undefinedFunction();</script>"}, "script error"),
    ],
    ids=["unrendered-math", "broken-image", "script-error"],
)
def test_broken_site_fails(tmp_path: Path, chromium: str, kwargs: dict, expected: str) -> None:
    report = browser_check.check_site(make_site(tmp_path / "site", **kwargs), chromium=chromium)
    assert not report.ok
    assert any(expected in failure for failure in report.failures), report.failures
