"""The built documentation site, opened in a real browser (headless Chromium over the DevTools protocol).

Build the site first (docs/conf.py says how; CI does it in .ci/run):

    .venv/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

The test serves docs/_build/html over HTTP on localhost, loads the landing page, every notebook page and
the other pages, and checks on each that every image has loaded, that every formula has been typeset by
MathJax (and none failed), that the console shows no error (nor any failed request, nor an uncaught
exception), and that every link inside the site resolves, anchors included. It saves one screenshot per
page in docs/_build/screenshots/.

It is skipped, saying why, when the site is not built, when Debian's `chromium` (apt-get install -y chromium)
is absent, or when websocket-client (the `docs` extra) is not installed; with ZOO_DOCS_SITE_REQUIRED=1 (set
by .ci/run) each of those is a failure instead.
"""

import base64
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("ZOO_DOCS_SITE", ROOT / "docs" / "_build" / "html"))  # or a site built elsewhere
SCREENSHOTS = SITE.parent / "screenshots"
BUILD = ".venv/bin/sphinx-build -W --keep-going -b html docs docs/_build/html"
REQUIRED = os.environ.get("ZOO_DOCS_SITE_REQUIRED") == "1"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _unavailable(reason):
    if REQUIRED:
        pytest.fail(f"{reason} (ZOO_DOCS_SITE_REQUIRED=1)")
    pytest.skip(reason)


def _browser():
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    _unavailable("no Chromium found (apt-get install -y chromium): the built site is not checked in a browser")


def _pages():
    """The landing page, every notebook page, then the other pages (paths relative to the site)."""
    if not (SITE / "index.html").exists():
        _unavailable(f"the documentation site is not built ({BUILD})")
    notebooks = sorted(p.relative_to(SITE).as_posix() for p in (SITE / "notebooks").glob("[0-9]*.html"))
    others = [
        "gallery.html",
        "MATH.html",
        "bring_your_own_model.html",
        "install.html",
        "cli.html",
        "benchmarks.html",
        "api/index.html",
        "api/inference.html",
        "api/zoo.html",
    ]
    return ["index.html"] + notebooks + [p for p in others if (SITE / p).exists()]


# ---- a tiny Chrome DevTools protocol client ----------------------------------------------------------
class Page:
    """One browser tab, driven over the DevTools protocol's websocket; records console errors."""

    def __init__(self, ws_url):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events = []
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)

    def call(self, method, **params):
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_for(self, event, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, msg in enumerate(self.events):
                if msg.get("method") == event:
                    del self.events[i]
                    return msg
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)
        raise TimeoutError(event)

    def evaluate(self, expression):
        result = self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True, timeout=60000
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url):
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def errors(self):
        """Console errors, uncaught exceptions, failed requests and error log entries seen so far."""
        out = []
        for msg in self.events:
            method, p = msg["method"], msg.get("params", {})
            if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
            elif method == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(p["exceptionDetails"])[:500])
            elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
            elif method == "Network.loadingFailed" and not p.get("canceled"):
                out.append(f"request failed: {p.get('errorText')} ({p.get('type')})")
            elif method == "Network.responseReceived" and p["response"]["status"] >= 400:
                out.append(f"HTTP {p['response']['status']}: {p['response']['url']}")
        return out

    def screenshot(self, path):
        height = self.evaluate("Math.min(document.documentElement.scrollHeight, 6000)")
        shot = self.call(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1},
        )
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self):
        self.ws.close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site():
    """(base URL of the site served on localhost, a Page in headless Chromium)."""
    pages = _pages()
    browser = _browser()
    try:
        import websocket  # noqa: F401
    except ImportError:
        _unavailable("websocket-client is not installed (pip install -c constraints.txt -e '.[docs]')")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=SITE))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    profile = tempfile.mkdtemp(prefix="zoo-chromium-")
    proc = subprocess.Popen(
        [
            browser,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    page = None
    try:
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError(f"{browser} exited with {proc.returncode}")
            m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if m:
                port = int(m.group(1))
        assert port, f"{browser} did not open its DevTools port"
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
        req = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?about:blank", method="PUT")
        target = json.loads(urllib.request.urlopen(req, timeout=30).read())
        page = Page(target["webSocketDebuggerUrl"])
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        yield base, page, pages
    finally:
        if page is not None:
            page.close()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)


# every image eager, then wait until each has loaded or failed; report the broken ones
IMAGES_LOADED = """
(async () => {
  const imgs = Array.from(document.images);
  imgs.forEach(i => { i.loading = "eager"; });
  await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => {
      i.addEventListener("load", r); i.addEventListener("error", r); setTimeout(r, 20000); })));
  return {count: imgs.length,
          broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute("src"))};
})()
"""

# wait for MathJax's first typeset pass; count the formulas it rendered and those it did not
MATH_TYPESET = """
(async () => {
  const mathNodes = Array.from(document.querySelectorAll("span.math, div.math"));
  if (mathNodes.length && window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  return {
    formulas: mathNodes.length,
    typeset: document.querySelectorAll("mjx-container").length,
    untypeset: mathNodes.filter(n => !n.querySelector("mjx-container")).map(n => n.textContent.slice(0, 80)),
    errors: Array.from(document.querySelectorAll("mjx-merror")).map(n => n.textContent.slice(0, 80)),
    mathjax: !!window.MathJax,
  };
})()
"""


def _screenshot_name(path):
    return path.replace("/", "_").replace(".html", ".png")


def test_every_page_loads_with_images_maths_and_no_console_errors(site):
    base, page, pages = site
    failures = []
    for path in pages:
        page.open(base + path)
        images = page.evaluate(IMAGES_LOADED)
        math = page.evaluate(MATH_TYPESET)
        time.sleep(0.3)  # let late requests (fonts) report
        page.call("Runtime.evaluate", expression="0")  # collect pending events
        page.screenshot(SCREENSHOTS / _screenshot_name(path))
        problems = [f"image did not load: {src}" for src in images["broken"]]
        problems += [f"formula not typeset: {t!r}" for t in math["untypeset"]]
        problems += [f"MathJax error: {t!r}" for t in math["errors"]]
        problems += page.errors()
        if path.startswith("notebooks/") and images["count"] < 2:  # the logo, then the figures
            problems.append(f"a notebook page with {images['count']} images: its figures are missing")
        if path == "MATH.html" and math["typeset"] < 8:  # its display formulas at least
            problems.append(f"MATH page: only {math['typeset']} typeset formulas (mjx-container)")
        failures += [f"{path}: {p}" for p in problems]
    assert not failures, "\n".join(failures)
    assert (SCREENSHOTS / "index.png").stat().st_size > 10_000


def test_notebook_pages_show_outputs_and_no_errors_or_stray_warnings(site):
    base, page, pages = site
    notebooks = [p for p in pages if p.startswith("notebooks/")]
    assert len(notebooks) == len(list((ROOT / "notebooks").glob("[0-9][0-9]_*.py")))
    for path in notebooks:
        page.open(base + path)
        found = page.evaluate("""({
            outputs: document.querySelectorAll(".cell_output").length,
            errors: Array.from(document.querySelectorAll(".output.error, .output.traceback"))
                         .map(n => n.textContent.slice(0, 200)),
            stderr: Array.from(document.querySelectorAll(".output.stderr")).map(n => n.textContent.slice(0, 200)),
        })""")
        assert found["outputs"] > 0, f"{path}: no cell outputs"
        assert not found["errors"], f"{path}: {found['errors']}"
        # no notebook shows a warning on purpose (they print the verdicts they discuss); the build fails on
        # stderr output too (nb_output_stderr = "warn"), unless a cell's metadata allows it
        assert not found["stderr"], f"{path}: {found['stderr']}"


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("name"):
            self.ids.add(attrs["name"])
        for key in ("href", "src"):
            if tag in ("a", "link", "img", "script") and attrs.get(key):
                self.hrefs.append(attrs[key])


def test_internal_links_resolve():
    """Every link from one page of the site to another (or to a file in it) resolves, anchors included.
    Links to other sites (Pyro, PyTorch, ArviZ, ...) are not followed: the build machines reach none."""
    _pages()
    parsed = {}

    def parse(path):
        if path not in parsed:
            p = _Links()
            p.feed(path.read_text(encoding="utf-8", errors="replace"))
            parsed[path] = p
        return parsed[path]

    broken = []
    html_files = sorted(SITE.rglob("*.html"))
    for source in html_files:
        if any(part.startswith("_") for part in source.relative_to(SITE).parts[:-1]):
            continue  # the theme's templates in _static/, sources and highlighted code in _modules/
        for href in parse(source).hrefs:
            url = urllib.parse.urlsplit(href)
            if url.scheme or url.netloc or href.startswith(("mailto:", "javascript:", "data:")):
                continue
            target = source if not url.path else (source.parent / urllib.parse.unquote(url.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{source.relative_to(SITE)}: {href} (no such file)")
            elif url.fragment and target.suffix == ".html" and url.fragment not in parse(target).ids:
                broken.append(f"{source.relative_to(SITE)}: {href} (no such anchor)")
    assert not broken, "\n".join(sorted(set(broken)))
