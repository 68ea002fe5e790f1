"""A headless Chromium driven through the DevTools protocol over a pipe (--remote-debugging-pipe: fd 3 in, fd 4
out, JSON messages ending in NUL), with the standard library only: Debian's chromium, no Playwright, no
download. The page's requests go through Fetch interception: anything outside the allowed prefixes (the test's
server on 127.0.0.1, the report's file://) is failed and recorded; console messages, uncaught exceptions and
browser log entries are recorded; clicks are real mouse events at the element's centre."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium")
SKIP_REASON = "chromium is not installed (`apt-get install -y chromium`, or `make test` as root installs it)"


class Browser:
    def __init__(self, profile: Path, allowed: tuple[str, ...], timeout: float = 120):
        assert CHROMIUM is not None
        self.allowed, self.timeout = allowed, timeout
        self.requests: list[str] = []
        self.blocked: list[str] = []
        self.console: list[dict[str, Any]] = []  # {"level", "text"} of console calls, exceptions and log entries
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # fds 3 and 4 in the child are what --remote-debugging-pipe reads and writes
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
             "--disable-default-apps", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
             f"--user-data-dir={profile}", "--window-size=1200,1600", "about:blank"],
            pass_fds=(3, 4), preexec_fn=_pipes_to_3_and_4(to_browser_r, from_browser_w),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._replies: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for method in ("Runtime.enable", "Log.enable", "Network.enable", "Page.enable"):
            self.call(method, session=True)
        self.call("Fetch.enable", session=True, patterns=[{"urlPattern": "*"}])

    # -- the protocol ----------------------------------------------------------------------------------------
    def call(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            self._replies[ident] = replies = queue.Queue()
            message: dict[str, Any] = {"id": ident, "method": method, "params": params}
            if session:
                message["sessionId"] = self.session
            os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        try:
            reply = replies.get(timeout=self.timeout)
        except queue.Empty:
            raise AssertionError(f"chromium did not answer {method} within {self.timeout} s") from None
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def _read(self) -> None:
        buffer = b""
        while True:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                return
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message:
                    self._replies.pop(message["id"], queue.Queue()).put(message)
                else:
                    self._event(message.get("method", ""), message.get("params", {}))

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Fetch.requestPaused":
            url = params["request"]["url"]
            ok = url.startswith(self.allowed)
            (self.requests if ok else self.blocked).append(url)
            threading.Thread(target=self.call, daemon=True, args=(
                "Fetch.continueRequest" if ok else "Fetch.failRequest", True),
                kwargs={"requestId": params["requestId"], **({} if ok else {"errorReason": "BlockedByClient"})}
            ).start()  # not from this thread: it reads the reply
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console.append({"level": params["type"], "text": text})
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text", "")
            self.console.append({"level": "exception", "text": text})
        elif method == "Log.entryAdded":
            entry = params["entry"]
            self.console.append({"level": entry["level"], "text": f"{entry.get('url', '')}: {entry['text']}"})

    # -- what a test does ------------------------------------------------------------------------------------
    def open(self, url: str) -> None:
        self.call("Page.navigate", session=True, url=url)
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float | None = None) -> Any:
        """Poll until the expression is truthy (evidence, not a fixed sleep); its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not (value := self.evaluate(expression)):
            assert time.monotonic() < deadline, f"never true in the page: {expression}"
            time.sleep(0.1)
        return value

    def click(self, selector: str) -> None:
        """A real left click (mouse pressed and released) at the centre of the first element matching."""
        box = self.evaluate(f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            if (!e) return null; e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();
            return {{x: r.left + Math.min(r.width / 2, 40), y: r.top + r.height / 2}}; }})()""")
        assert box is not None, f"nothing to click: {selector}"
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", session=True, type=kind, x=box["x"], y=box["y"], button="left",
                      clickCount=1)

    def visible_text(self, selector: str) -> str:
        """innerText of the first match if it is rendered (a closed <details> hides its content), else ''."""
        return self.evaluate(f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            return e && e.checkVisibility() && e.getBoundingClientRect().height > 0 ? e.innerText : ''; }})()""")

    def errors(self) -> list[dict[str, Any]]:
        return [m for m in self.console if m["level"] in ("error", "exception", "assert")]

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


def _pipes_to_3_and_4(read_end: int, write_end: int):
    def setup() -> None:  # in the child, before exec: the browser reads fd 3 and writes fd 4
        r, w = os.dup(read_end), os.dup(write_end)  # first out of the way of 3 and 4
        os.dup2(r, 3)
        os.dup2(w, 4)

    return setup
