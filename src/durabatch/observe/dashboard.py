"""`durabatch dashboard RUN_DIR [RUN_DIR ...]`: a live local web page over one or more run directories.

A stdlib ThreadingHTTPServer bound to 127.0.0.1; every request opens the ledger read-only for that request and
closes it (no lock held, safe while jobs run; nothing is written). The page polls JSON and the same HTML fragment
`durabatch report` writes (one renderer, `report.body_html`); nothing is fetched from anywhere else.

  /                               the page
  /api/runs                       each run directory's status: done/total, failed, rate, ETA, state
  /api/run/<i>                    everything the report shows, as JSON (series, runs, failures by type, job, ...)
  /api/run/<i>/html               the report's body for that run directory (tables and SVG charts)
  /api/run/<i>/failures?offset=&limit=   failed items with tracebacks and every attempt
  /api/run/<i>/sample?n=          a few result rows from the newest shard"""

from __future__ import annotations

import json
import os
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..errors import DurabatchError
from ..store.ledger import Ledger
from ..store.rundir import RunDir
from ..store.shards import read_shard
from . import report, status

PAGE_SIZE = 50  # failed items per page of the browser
SAMPLE_ROWS = 20


# -- data ------------------------------------------------------------------------------------------------------
def run_summary(run_dir: Path) -> dict[str, Any]:
    """`durabatch status` of a map job, or of a loop (latest step and metrics)."""
    if RunDir(run_dir).ledger.exists():
        return {"kind": "map", **status.status(run_dir)}
    loop = status.loop_status(run_dir)
    if loop is None:
        raise DurabatchError(f"{run_dir}: not a durabatch run directory (no ledger.sqlite, no checkpoints/)")
    return {**loop, "history": None}


def failures_page(run_dir: Path, offset: int = 0, limit: int = PAGE_SIZE) -> dict[str, Any]:
    """Failed (and quarantined, interrupted, put back) items by position, with traceback and every attempt."""
    ledger = Ledger.open_readonly(RunDir(run_dir))
    try:
        with ledger.snapshot():
            items = ledger.failures()
            history = ledger.attempt_history()
    finally:
        ledger.close()
    page = items[max(0, offset):max(0, offset) + max(1, min(limit, 500))]
    return {"total": len(items), "offset": offset,
            "items": [{**f, "history": history.get(f["pos"], [])} for f in page]}


def sample_rows(run_dir: Path, n: int = SAMPLE_ROWS) -> dict[str, Any]:
    """The first rows of the newest committed shard (what the function returned, as stored)."""
    rd = RunDir(run_dir)
    ledger = Ledger.open_readonly(rd)
    try:
        shards = ledger.shards()
    finally:
        ledger.close()
    if not shards:
        return {"shard": None, "columns": [], "rows": []}
    newest = max(shards, key=lambda s: s["committed_at"])
    try:
        table = read_shard(rd.shards / newest["name"])
    except OSError as exc:
        raise DurabatchError(f"{newest['name']}: cannot read ({exc})") from None
    return {"shard": newest["name"], "columns": table.column_names,
            "rows": table.slice(0, max(0, min(n, 1000))).to_pylist()}


# -- the server ------------------------------------------------------------------------------------------------
class Handler(BaseHTTPRequestHandler):
    server: DashboardServer

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]
        try:
            if not parts:
                return self._send(PAGE.encode(), "text/html; charset=utf-8")
            if parts == ["api", "runs"]:
                return self._json([{"index": i, **_safe(run_summary, d)} for i, d in enumerate(self.server.runs)])
            if len(parts) >= 3 and parts[:2] == ["api", "run"] and parts[2].isdigit():
                return self._run(int(parts[2]), parts[3:], query)
        except DurabatchError as exc:
            return self._json({"error": str(exc)}, HTTPStatus.INTERNAL_SERVER_ERROR)
        except (ValueError, IndexError) as exc:
            return self._json({"error": f"bad request: {exc}"}, HTTPStatus.BAD_REQUEST)
        self._json({"error": f"no such page: {url.path}"}, HTTPStatus.NOT_FOUND)

    def _run(self, index: int, rest: list[str], query: dict[str, str]) -> None:
        run_dir = self.server.runs[index]
        if not rest:
            self._send(report.as_json(report.collect(run_dir)).encode(), "application/json")
        elif rest == ["html"]:
            data = {**report.collect(run_dir), "failed_items": []}  # the page's failure browser lists them
            self._send(report.body_html(data).encode(), "text/html; charset=utf-8")
        elif rest == ["failures"]:
            self._json(failures_page(run_dir, int(query.get("offset", 0)), int(query.get("limit", PAGE_SIZE))))
        elif rest == ["sample"]:
            self._json(sample_rows(run_dir, int(query.get("n", SAMPLE_ROWS))))
        else:
            self._json({"error": f"no such page: {self.path}"}, HTTPStatus.NOT_FOUND)

    def _json(self, value: Any, code: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(json.dumps(value, default=str, allow_nan=False).encode() if code != HTTPStatus.OK
                   else report.as_json(value).encode(), "application/json", code)

    def _send(self, body: bytes, content_type: str, code: HTTPStatus = HTTPStatus.OK) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; "
                         "style-src 'unsafe-inline'; img-src 'self' data:")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass  # a request line a second is noise


def _safe(fn: Any, run_dir: Path) -> dict[str, Any]:
    try:
        return fn(run_dir)
    except DurabatchError as exc:  # one unreadable directory does not take the page down
        return {"run_dir": str(run_dir), "error": str(exc)}


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, runs: list[Path], host: str = "127.0.0.1", port: int = 0):
        self.runs = runs
        super().__init__((host, port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


def make_server(run_dirs: list[str | os.PathLike], port: int = 0, host: str = "127.0.0.1") -> DashboardServer:
    """Check each directory is a run directory, then bind (port 0: a free port; see `.url`)."""
    runs = [Path(d).resolve() for d in run_dirs]
    for run_dir in runs:
        if not run_dir.is_dir():
            raise DurabatchError(f"{run_dir}: no such directory")
        run_summary(run_dir)
    return DashboardServer(runs, host, port)


def serve(run_dirs: list[str | os.PathLike], port: int = 8765, host: str = "127.0.0.1") -> None:
    server = make_server(run_dirs, port, host)
    print(f"durabatch dashboard: {server.url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# -- the page --------------------------------------------------------------------------------------------------
SCRIPT = r"""
const $ = (s, e = document) => e.querySelector(s);
const esc = v => String(v ?? '').replace(/[&<>"]/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'})[c]);
const num = v => v == null ? '?'
  : typeof v === 'number' ? v.toLocaleString('en-US', {maximumFractionDigits: 1}) : esc(v);
const dur = s => s == null ? '?' : s < 60 ? Math.round(s) + ' s' : s < 3600 ? Math.round(s / 60) + ' min'
  : (s / 3600).toFixed(1) + ' h';
const get = async u => {
  const r = await fetch(u, {cache: 'no-store'});
  return u.includes('/html') ? r.text() : r.json();
};
const failOffset = {};

function section(i, kind = 'map') {
  let el = document.getElementById('run' + i);
  if (el) return el;
  el = document.createElement('section');
  el.id = 'run' + i;
  el.innerHTML = '<h2 class="dir"></h2><p class="head"></p><div class="body"></div>' + (kind === 'loop' ? '' :
    `<h2 id="failures-${i}">Failed items</h2><div class="failures"></div>`
    + '<h2>Sample of results</h2><div class="sample"></div>');
  document.getElementById('runs').appendChild(el);
  if (kind !== 'loop') { failures(i, 0); sample(i); }
  return el;
}

function head(r) {
  if (r.error) return `<span class="err">${esc(r.error)}</span>`;
  if (r.kind === 'loop') {
    const l = r.logged || r.latest || {};  // ckpt.log()'s last row, else the last checkpoint's
    return `loop: step <b class="step">${num(r.step ?? l.step)}</b>` + (r.total ? ` of ${num(r.total)}` : '')
      + '; ' + Object.entries(l.metrics || {}).map(
      ([k, v]) => `${esc(k)}=${typeof v === 'number' ? v.toPrecision(4) : esc(v)}`).join(', ');
  }
  const failed = `<b class="failed">${num(r.failed)}</b> failed`;
  return `<b class="state">${esc(r.state)}</b>: <b class="done">${num(r.done)}</b> of <b class="total">`
    + `${num(r.total)}</b> done, ${r.failed ? `<a class="failed-link" href="#failures-${r.index}">${failed}</a>`
    : failed}, ${num(r.rate_per_s)} items/s`
    + (r.remaining ? `, ETA ${dur(r.eta_s)}` : '')
    + (r.api ? `; API ${num(r.api.requests_per_min)} req/min, ${num(r.api.rate_limited)}`
    + ` 429s, ${num(r.api.tokens_per_min)} tokens/min, cost `
    + `${r.api.cost == null ? '?' : r.api.cost.toFixed(4)} ${esc(r.api.currency || '')}` : '');
}

async function failures(i, offset) {
  failOffset[i] = offset;
  const f = await get(`/api/run/${i}/failures?offset=${offset}`), el = $('.failures', section(i));
  if (f.error || !f.total) { el.innerHTML = `<p class="empty">${esc(f.error || 'None.')}</p>`; return; }
  el.innerHTML = `<p>${offset + 1}-${offset + f.items.length} of ${f.total}
    <button ${offset ? '' : 'disabled'} onclick="failures(${i}, ${Math.max(0, offset - 50)})">previous</button>
    <button ${offset + 50 < f.total ? '' : 'disabled'} onclick="failures(${i}, ${offset + 50})">next</button></p>`
    + f.items.map(x => `<details class="failure"><summary>${esc(x.key)}: ${esc(x.state)}, ${esc(x.error_type)}:
      ${esc(x.message)} (${x.attempts} attempts)</summary><ol>${x.history.map(a => `<li>${esc(new Date(a.at * 1000)
      .toLocaleString())} ${esc(a.error_type)}: ${esc(a.message)}</li>`).join('')}</ol>
      <pre class="traceback">${esc(x.traceback)}</pre></details>`).join('');
}

async function sample(i) {
  const s = await get(`/api/run/${i}/sample`), el = $('.sample', section(i));
  if (s.error || !s.rows || !s.rows.length) {
    el.innerHTML = `<p class="empty">${esc(s.error || 'None yet.')}</p>`;
    return;
  }
  el.innerHTML = `<p>from ${esc(s.shard)} <button onclick="sample(${i})">refresh</button></p><table class="rows"><tr>`
    + s.columns.map(c => `<th>${esc(c)}</th>`).join('') + '</tr>' + s.rows.map(r => '<tr>' + s.columns.map(
      c => `<td>${esc(typeof r[c] === 'object' && r[c] !== null ? JSON.stringify(r[c]) : r[c])}</td>`).join('')
      + '</tr>').join('') + '</table>';
}

async function refresh() {
  try {
    const runs = await get('/api/runs');
    for (const r of runs) {
      const el = section(r.index, r.kind);
      $('.dir', el).textContent = r.run_dir;
      $('.head', el).innerHTML = head(r);
      if (!r.error) $('.body', el).innerHTML = await get(`/api/run/${r.index}/html`);
    }
    $('#updated').textContent = 'updated ' + new Date().toLocaleTimeString();
  } catch (e) { $('#updated').textContent = 'cannot reach the dashboard: ' + e; }
}
refresh();
setInterval(refresh, 3000);
"""

# an empty inline icon: without one the browser asks for /favicon.ico, and its 404 is an error in the console
PAGE = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/><title>durabatch dashboard</title>'
        '<link rel="icon" href="data:,"/>'
        f"<style>{report.CSS}section{{border-top:3px solid #1f77b4;margin-top:2em}}.head{{font-size:16px}}"
        "details.failure{margin:.3em 0}pre{background:#f6f6f6;padding:.5em;overflow:auto;font-size:12px}"
        ".err{color:#b00}table.rows td{text-align:left;max-width:30em;overflow:hidden}</style></head>\n"
        '<body><h1>durabatch dashboard</h1><p class="meta" id="updated">loading...</p><div id="runs"></div>'
        f"<script>{SCRIPT}</script></body></html>\n")
