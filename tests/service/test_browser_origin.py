"""A real headless Chromium: a page of another origin cannot change a service that has no
token (issue 14, item 5); the service's own page can."""

from __future__ import annotations

import http.server
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from clients.commands.demo import free_port
from service.api import create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ATTACK = """<!doctype html><title>elsewhere</title><script>
async function attack(svc) {
  const tries = [
    [svc + "/config", {method: "PUT", mode: "no-cors", body: '{"threshold": 0.95}',
                      headers: {"Content-Type": "text/plain"}}],
    [svc + "/config", {method: "PUT", body: '{"threshold": 0.95}',
                      headers: {"Content-Type": "application/json"}}],
    [svc + "/models/tiny2/load", {method: "POST", mode: "no-cors"}],
    [svc + "/models/tiny2/load", {method: "POST"}],
  ];
  const out = [];
  for (const [url, opts] of tries) {
    try { const r = await fetch(url, opts); out.push(r.type + " " + r.status); }
    catch (e) { out.push("blocked"); }
  }
  return out;
}
</script>"""


@pytest.fixture
def served(service: Any) -> Iterator[str]:
    """The service's real app under uvicorn on 127.0.0.1, no token."""
    port = free_port()
    app = create_app(service.pipeline, token="")
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def elsewhere() -> Iterator[str]:
    """A page on another origin (another port of 127.0.0.1)."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = ATTACK.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.browser
@pytest.mark.timeout(120)
def test_a_page_of_another_origin_cannot_change_the_service(served: str, elsewhere: str) -> None:
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (scripts/install.sh --test installs it)")
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(elsewhere, wait_until="load")
            results = page.evaluate("(svc) => attack(svc)", served)
            # the opaque no-cors answers hide the status from the page; the service refused
            assert len(results) == 4, results
            assert httpx.get(f"{served}/config").json()["threshold"] == 0.7
            assert httpx.get(f"{served}/models").json()["active"]["name"] == "tiny"

            # the service's own page (same origin) can change it
            page.goto(f"{served}/health/live", wait_until="load")
            status = page.evaluate(
                """async () => (await fetch("/config", {method: "PUT",
                     headers: {"Content-Type": "application/json"},
                     body: '{"threshold": 0.6}'})).status"""
            )
            assert status == 200
            assert httpx.get(f"{served}/config").json()["threshold"] == 0.6
        finally:
            browser.close()
