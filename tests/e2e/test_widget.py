"""The reference widget in a real headless Chromium: an event on Kafka changes the page.

Chromium is driven over the DevTools protocol (a WebSocket aiohttp already
speaks): open the page, read the DOM, publish an event, read the DOM again.
"""

from __future__ import annotations

import base64
import itertools
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.harness import Channels, WorkerProcess, eventually, free_port

pytestmark = pytest.mark.timeout(240)
TOKEN = "widget-token"


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("Chromium is missing: apt-get install chromium (make test installs it)")


class Page:
    """One browser tab, driven over the Chrome DevTools Protocol."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        await self._socket.send_json({"id": call_id, "method": method, "params": params})
        while True:
            message = await self._socket.receive_json(timeout=10)
            if message.get("id") == call_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    async def text(self, element_id: str) -> str:
        result = await self.call(
            "Runtime.evaluate",
            expression=f"document.getElementById({element_id!r}).innerText",
            returnByValue=True,
        )
        return str(result["result"].get("value", ""))

    async def screenshot(self) -> bytes:
        shot = await self.call("Page.captureScreenshot", format="png")
        return base64.b64decode(shot["data"])


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [chromium_binary(), "--headless=new", "--no-sandbox", "--disable-gpu",
         "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'profile'}", f"--remote-debugging-port={port}",
         "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield port
    finally:
        process.terminate()
        process.wait(20)


@pytest.fixture
async def page(browser: int) -> AsyncIterator[Page]:
    async with aiohttp.ClientSession() as http:

        async def targets() -> list[dict[str, Any]] | None:
            try:
                async with http.get(f"http://127.0.0.1:{browser}/json/list") as answer:
                    found: list[dict[str, Any]] = await answer.json()
                    return [t for t in found if t.get("type") == "page"] or None
            except aiohttp.ClientError:
                return None

        [target, *_] = await eventually(targets, within=30, every=0.3)
        async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as socket:
            tab = Page(socket)
            await tab.call("Page.enable")
            await tab.call("Runtime.enable")
            yield tab


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    workdir = tmp_path_factory.mktemp("widget")
    worker = WorkerProcess(kafka_bootstrap, redis_url, workdir)
    api = WorkerProcess(
        kafka_bootstrap, redis_url, workdir, command="api",
        env={"NEXTBEST_API_TOKENS": TOKEN},
    )  # fmt: skip
    worker.start()
    try:
        api.start(ready_within=30)
        try:
            yield api
        finally:
            api.stop()
    finally:
        worker.stop()


async def test_the_widget_follows_a_customer_live(
    stack: WorkerProcess, page: Page, kafka_bootstrap: str, tmp_path: Path
) -> None:
    customer = f"c-{uuid.uuid4().hex[:12]}"
    async with Channels(kafka_bootstrap) as channels:
        await channels.send(
            "web", "cart.item_added", customer, {"sku": "LAMP-7", "qty": 1, "price": 30}
        )

        await page.call(
            "Page.navigate", url=stack.url(f"/widget#customer={customer}&token={TOKEN}")
        )
        await eventually(lambda: _shows(page, "status", "live"), within=20, every=0.2)
        await eventually(lambda: _shows(page, "cart", "LAMP-7"), within=20, every=0.2)
        assert await page.text("version") == "1"

        await channels.send(
            "mobile", "search.performed", customer, {"query": "desk lamp", "results": 0}
        )
        await channels.send("mobile", "session.started", customer)
        await eventually(lambda: _shows(page, "version", "3"), within=10, every=0.1)

    assert "web" in await page.text("path")
    assert "mobile" in await page.text("path")
    assert "desk lamp" in await page.text("searches")
    assert "resume_cart" in await page.text("triggers")
    assert await page.text("cart-value") == "30.00"
    shot = await page.screenshot()
    assert shot.startswith(b"\x89PNG")
    if os.environ.get("NEXTBEST_SCREENSHOTS"):  # to look at it: a folder to write into
        (Path(os.environ["NEXTBEST_SCREENSHOTS"]) / "widget.png").write_bytes(shot)


async def _shows(page: Page, element_id: str, text: str) -> bool:
    return text in await page.text(element_id)
