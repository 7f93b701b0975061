"""Open every page of the built site in headless Chromium and fail on what a reader would see.

Usage: ``python -m tools.browser_check _build/html`` (run by ``make test``).

A page fails when it is missing, when an internal link or image is broken (a missing file or a
missing ``#anchor``), when the browser console shows an error caused by the site's own
resources, or when a page with math still shows raw ``\\(`` / ``\\[`` / ``$$`` after MathJax ran.
Requests to outside hosts (which this machine cannot reach) are listed but do not fail.
Screenshots of the intro page and of the first chapter are saved under ``_build/screenshots``.

Chromium is Debian's ``chromium``. Without it the check skips with a message, unless
``DEEPLAB_EDU_BROWSER=required`` (as in CI), where its absence is a failure.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
SKIP_DIRS = {"_static", "_sources", "_images", "_sphinx_design_static", "_panels_static"}
# text left in the page (outside code blocks) after MathJax ran; any of these means raw math
RAW_MATH = ("\\(", "\\[", "$$")
VISIBLE_TEXT_JS = """() => {
  const body = document.body.cloneNode(true);
  const skip = 'pre, code, script, style, mjx-container, .highlight';
  body.querySelectorAll(skip).forEach(e => e.remove());
  return body.innerText;
}"""
MATH_DONE_JS = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
    return 'typeset';
  }
  return window.MathJax ? 'loading' : 'absent';
}"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class Report:
    pages: int = 0
    failures: list[str] = field(default_factory=list)
    outside: set[str] = field(default_factory=set)
    screenshots: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.pages > 0 and not self.failures


class _Links(HTMLParser):
    """Collects ids, and the href/src of links and images, of one HTML file."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.refs: list[tuple[str, str]] = []
        self.redirect = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for key in ("id", "name"):
            if values.get(key):
                self.ids.add(values[key])
        if tag == "a" and values.get("href"):
            self.refs.append(("link", values["href"]))
        if tag == "img" and values.get("src"):
            self.refs.append(("image", values["src"]))
        if tag == "meta" and (values.get("http-equiv") or "").lower() == "refresh":
            self.redirect = True  # e.g. the root index.html: check its target, not its content
            url = (values.get("content") or "").partition("url=")[2]
            if url:
                self.refs.append(("redirect", url))


def _parse(path: Path) -> _Links:
    stat = path.stat()
    return _parse_version(path, stat.st_mtime_ns, stat.st_size)


@functools.cache
def _parse_version(path: Path, mtime_ns: int, size: int) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return parser


def _pages(root: Path) -> list[Path]:
    return sorted(
        p for p in root.rglob("*.html") if not SKIP_DIRS & set(p.relative_to(root).parts[:-1])
    )


def check_links(root: Path, page: Path) -> list[str]:
    """Internal links and images of ``page`` that point at a missing file or anchor."""
    problems = []
    base = "http://site/" + page.relative_to(root).as_posix()
    for kind, ref in _parse(page).refs:
        target = urlsplit(urljoin(base, ref))
        if target.scheme not in ("http", "https") or target.netloc != "site":
            continue  # outside links, mailto:, javascript: ...
        path = root / unquote(target.path.lstrip("/"))
        if path.is_dir():
            path = path / "index.html"
        if not path.is_file():
            problems.append(f"{page.relative_to(root)}: broken {kind} {ref!r}")
        elif target.fragment and path.suffix == ".html":
            if unquote(target.fragment) not in _parse(path).ids:
                problems.append(f"{page.relative_to(root)}: broken anchor {ref!r}")
    return problems


def _serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def check_site(
    root: Path, screenshots: dict[str, Path] | None = None, chromium: str | None = None
) -> Report:
    """Open every page under ``root`` in headless Chromium and collect what is broken.

    Args:
        root: the built site (a folder of HTML pages).
        screenshots: page path (relative to root) -> PNG to write.
        chromium: the browser executable (default: found on PATH).

    Returns:
        A :class:`Report`; ``report.ok`` is False when anything failed.

    Raises:
        FileNotFoundError: if ``root`` has no HTML page or Chromium is not found.
    """
    from playwright.sync_api import sync_playwright

    root = Path(root).resolve()
    pages = _pages(root)
    if not pages:
        raise FileNotFoundError(f"no HTML pages under {root}: build the site first")
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("Chromium not found (Debian: apt-get install chromium)")
    report = Report()
    server, origin = _serve(root)
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            for path in pages:
                report.pages += 1
                name = path.relative_to(root).as_posix()
                report.failures += check_links(root, path)
                if _parse(path).redirect:
                    continue
                report.failures += _check_page(browser, origin, name, report, screenshots or {})
        finally:
            browser.close()
            server.shutdown()
    return report


def _check_page(browser, origin: str, name: str, report: Report, shots: dict) -> list[str]:
    problems: list[str] = []
    page = browser.new_page()

    def own(url: str) -> bool:
        # the browser asks for /favicon.ico by itself, whatever the page says: not the site's
        return url.startswith(origin) and url != origin + "favicon.ico"

    def on_console(message) -> None:
        if message.type == "error":
            url = (message.location or {}).get("url", "")
            if own(url) or not url:
                text = message.text
                # failed requests to outside hosts are reported as console errors too
                if "net::ERR_" in text and not own(url):
                    return
                problems.append(f"{name}: console error: {text}")

    def on_failed(request) -> None:
        if own(request.url):
            problems.append(f"{name}: request failed: {request.url} ({request.failure})")
        else:
            report.outside.add(urlsplit(request.url).netloc)

    def on_response(response) -> None:
        if own(response.url) and response.status >= 400:
            problems.append(f"{name}: HTTP {response.status} for {response.url}")

    def on_page_error(error) -> None:  # an uncaught exception in the page's own scripts
        problems.append(f"{name}: script error: {error}")

    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    page.on("requestfailed", on_failed)
    page.on("response", on_response)
    response = page.goto(origin + name, wait_until="load", timeout=60_000)
    if response is None or response.status != 200:
        problems.append(f"{name}: page missing (status {response and response.status})")
    state = page.evaluate(MATH_DONE_JS)
    has_math = page.locator(".math").count() > 0
    if has_math and state != "typeset":
        problems.append(f"{name}: has math but MathJax is {state}")
    text = page.evaluate(VISIBLE_TEXT_JS)
    for marker in RAW_MATH:
        if marker in text:
            problems.append(f"{name}: raw math {marker!r} left in the page")
    broken = page.evaluate(
        "() => [...document.images].filter(i => i.complete && i.naturalWidth === 0)"
        ".map(i => i.getAttribute('src'))"
    )
    problems += [f"{name}: image did not load: {src}" for src in broken]
    if name in shots:
        shots[name].parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots[name]), full_page=True)
        report.screenshots.append(shots[name])
    page.close()
    return problems


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else "_build/html")
    required = os.environ.get("DEEPLAB_EDU_BROWSER", "").lower() == "required"
    if find_chromium() is None:
        message = "browser check: Chromium not found (Debian: apt-get install chromium)"
        if required:
            print(message + " and DEEPLAB_EDU_BROWSER=required: FAIL")
            return 1
        print(message + ": SKIPPED")
        return 0
    shots_dir = root.parent / "screenshots"
    shots = {
        "book/intro.html": shots_dir / "intro.png",
        "book/getting_started.html": shots_dir / "getting_started.png",
    }
    report = check_site(root, shots)
    for failure in report.failures:
        print("FAIL", failure)
    if report.outside:
        print("outside hosts requested (not reachable here, not failures):", sorted(report.outside))
    for shot in report.screenshots:
        print("screenshot:", shot)
    print(f"browser check: {report.pages} pages, {len(report.failures)} problems")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
