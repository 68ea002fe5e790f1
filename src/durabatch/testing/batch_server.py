"""A local fake of the OpenAI Batch API (Files + Batches), for tests of `--batch-api openai` with the official
openai client: POST /v1/files (multipart), GET /v1/files/{id}/content, POST /v1/batches, GET /v1/batches/{id},
GET /v1/batches?limit=&after= (newest first), POST /v1/batches/{id}/cancel. Binds 127.0.0.1 only.

A batch moves validating -> in_progress -> finalizing -> completed one step per `polls_per_state` polls (or per
`seconds_per_state`); chosen batches fail validation or expire (half their requests answered), chosen custom ids
get an error line. `pause_at` holds the first request of a stage (upload, create, created, poll, download) until
`release()`: a test waits on `paused`, kills the runner there, and resumes it. `log` keeps every batch's custom
ids, so a test can check that no item was ever in two batches.

    with BatchServer(BatchServerConfig(line_errors={"7"})) as s:   # s.url -> OPENAI_BASE_URL
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from .server import answer_for

STAGES = ("upload", "create", "created", "poll", "download")


@dataclass
class BatchServerConfig:
    polls_per_state: int = 1  # polls of a batch per step of its state machine
    seconds_per_state: float | None = None  # or: time per step
    fail: set[int] = field(default_factory=set)  # batches (0-based, creation order) that fail validation
    expire: set[int] = field(default_factory=set)  # batches that expire with half their requests answered
    line_errors: set[str] = field(default_factory=set)  # custom ids answered with an error line...
    errors_once: bool = True  # ... the first time only (a re-submission succeeds)
    pause_at: str | None = None  # one of STAGES: that stage's first request waits for release()


@dataclass
class BatchLog:
    uploads: list[str] = field(default_factory=list)  # file ids
    batches: list[dict[str, Any]] = field(default_factory=list)  # {id, file_id, metadata, custom_ids}
    events: list[str] = field(default_factory=list)  # "create batch_3", "poll batch_3", ...

    def submissions(self) -> Counter:
        """custom id -> how many batches it was in."""
        return Counter(cid for b in self.batches for cid in b["custom_ids"])


def question_request(record: dict) -> dict:
    """A build function for tests: the chat request asking record["question"]."""
    return {"model": "local", "messages": [{"role": "user", "content": record["question"]}], "max_tokens": 5}


def answer_letter(record: dict, response: dict) -> dict:
    """A parse function for tests: the answer letter and the usage."""
    return {"answer": response["choices"][0]["message"]["content"][-1], "tokens": response["usage"]["total_tokens"]}


class BatchServer:
    def __init__(self, config: BatchServerConfig | None = None, port: int = 0):
        self.config = config or BatchServerConfig()
        self.log = BatchLog()
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.paused = threading.Event()  # set when a request is held at config.pause_at
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._errored: set[str] = set()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> BatchServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()

    def release(self) -> None:
        self._release.set()

    def hold(self, stage: str) -> None:
        """Wait here if this is the stage to pause at (once)."""
        with self._lock:
            if self.config.pause_at != stage:
                return
            self.config.pause_at = None
            self.log.events.append(f"paused {stage}")
        self.paused.set()
        self._release.wait(120)

    # -- files -------------------------------------------------------------------------------------------------
    def upload(self, content_type: str, body: bytes) -> dict:
        self.hold("upload")
        parts = _multipart(content_type, body)
        with self._lock:
            file_id = f"file-{next(self._ids)}"
            self.files[file_id] = parts.get("file", b"")
            self.log.uploads.append(file_id)
        return _file_object(file_id, len(self.files[file_id]), parts.get("purpose", b"batch").decode())

    # -- batches -----------------------------------------------------------------------------------------------
    def create(self, request: dict) -> dict:
        self.hold("create")
        with self._lock:
            data = self.files.get(request.get("input_file_id", ""))
            if data is None:
                raise KeyError(request.get("input_file_id"))
            lines = [json.loads(line) for line in data.splitlines() if line.strip()]
            n = len(self.log.batches)
            batch = {"id": f"batch_{next(self._ids)}", "object": "batch", "endpoint": request.get("endpoint"),
                     "errors": None, "input_file_id": request["input_file_id"], "completion_window": "24h",
                     "status": "validating", "output_file_id": None, "error_file_id": None,
                     "created_at": int(time.time()), "metadata": request.get("metadata") or {},
                     "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                     "_lines": lines, "_n": n, "_polls": 0, "_t0": time.monotonic()}
            self.batches[batch["id"]] = batch
            self.log.batches.append({"id": batch["id"], "file_id": request["input_file_id"],
                                     "metadata": batch["metadata"], "custom_ids": [str(x["custom_id"]) for x in lines]})
            self.log.events.append(f"create {batch['id']}")
        self.hold("created")
        return _public(batch)

    def retrieve(self, batch_id: str) -> dict:
        self.hold("poll")
        with self._lock:
            batch = self.batches[batch_id]
            batch["_polls"] += 1
            self._advance(batch)
            self.log.events.append(f"poll {batch_id} {batch['status']}")
            return _public(batch)

    def listing(self, limit: int, after: str | None) -> dict:
        with self._lock:
            ordered = list(reversed(self.batches.values()))
            start = next((i + 1 for i, b in enumerate(ordered) if b["id"] == after), 0) if after else 0
            page = ordered[start:start + limit]
            return {"object": "list", "data": [_public(b) for b in page], "has_more": start + limit < len(ordered),
                    "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None}

    def cancel(self, batch_id: str) -> dict:
        with self._lock:
            batch = self.batches[batch_id]
            if batch["status"] not in ("completed", "failed", "expired", "cancelled"):
                self._finish(batch, "cancelled", len(batch["_lines"]) // 2)
            return _public(batch)

    def content(self, file_id: str) -> bytes:
        self.hold("download")
        with self._lock:
            return self.files[file_id]

    def _advance(self, batch: dict) -> None:
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            return
        c = self.config
        step = int((time.monotonic() - batch["_t0"]) / c.seconds_per_state) if c.seconds_per_state else \
            batch["_polls"] // c.polls_per_state
        if batch["_n"] in c.fail and step >= 1:
            batch["status"] = "failed"
            batch["errors"] = {"object": "list", "data": [{"code": "invalid_request", "line": 1, "param": None,
                                                           "message": "the fake server fails this batch"}]}
        elif batch["_n"] in c.expire and step >= 2:
            self._finish(batch, "expired", len(batch["_lines"]) // 2)
        elif step >= 3:
            self._finish(batch, "completed", len(batch["_lines"]))
        else:
            batch["status"] = ("validating", "in_progress", "finalizing")[step]

    def _finish(self, batch: dict, status: str, answered: int) -> None:
        out, err = [], []
        for i, line in enumerate(batch["_lines"]):
            if i >= answered:
                err.append({"id": f"batch_req_{i}", "custom_id": line["custom_id"], "response": None,
                            "error": {"code": f"batch_{status}", "message": f"not run: the batch was {status}"}})
            elif self._fails(str(line["custom_id"])):
                err.append({"id": f"batch_req_{i}", "custom_id": line["custom_id"], "error": None, "response": {
                    "status_code": 500, "request_id": f"req_{i}",
                    "body": {"error": {"message": "internal error", "type": "server_error"}}}})
            else:
                out.append({"id": f"batch_req_{i}", "custom_id": line["custom_id"], "error": None,
                            "response": {"status_code": 200, "request_id": f"req_{i}", "body": _answer(line)}})
        batch["status"] = status
        batch["request_counts"] = {"total": len(batch["_lines"]), "completed": len(out), "failed": len(err)}
        for name, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                file_id = f"file-{next(self._ids)}"
                self.files[file_id] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                batch[name] = file_id

    def _fails(self, custom_id: str) -> bool:
        if custom_id not in self.config.line_errors:
            return False
        if self.config.errors_once and custom_id in self._errored:
            return False
        self._errored.add(custom_id)
        return True


def _answer(line: dict) -> dict:
    body = line.get("body") or {}
    prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
    tokens = len(prompt) // 4 + 1
    return {"id": f"chatcmpl-{line['custom_id']}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "local"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"Answer: {answer_for(prompt)}"}}],
            "usage": {"prompt_tokens": tokens, "completion_tokens": 3, "total_tokens": tokens + 3}}


def _public(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def _file_object(file_id: str, size: int, purpose: str) -> dict:
    return {"id": file_id, "object": "file", "bytes": size, "created_at": int(time.time()),
            "filename": f"{file_id}.jsonl", "purpose": purpose, "status": "processed"}


def _multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    """name -> value of a multipart/form-data body."""
    boundary = content_type.split("boundary=", 1)[1].strip().strip('"').encode()
    fields = {}
    for part in body.split(b"--" + boundary):
        head, sep, value = part.partition(b"\r\n\r\n")
        if not sep or b"name=" not in head:
            continue
        name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode()
        fields[name] = value[:-2] if value.endswith(b"\r\n") else value
    return fields


def _handler(server: BatchServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass  # the client was killed while we held its request

        def _route(self, method: str) -> None:
            url = urlparse(self.path)
            parts = url.path.rstrip("/").split("/")[2:]  # after /v1
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                if method == "POST" and parts == ["files"]:
                    return self._send(200, server.upload(self.headers.get("Content-Type", ""), body))
                if method == "GET" and len(parts) == 3 and parts[0] == "files" and parts[2] == "content":
                    return self._send(200, server.content(parts[1]), "application/octet-stream")
                if method == "POST" and parts == ["batches"]:
                    return self._send(200, server.create(json.loads(body or b"{}")))
                if method == "GET" and parts == ["batches"]:
                    query = parse_qs(url.query)
                    return self._send(200, server.listing(int(query.get("limit", ["20"])[0]),
                                                          query.get("after", [None])[0]))
                if method == "GET" and len(parts) == 2 and parts[0] == "batches":
                    return self._send(200, server.retrieve(parts[1]))
                if method == "POST" and len(parts) == 3 and parts[0] == "batches" and parts[2] == "cancel":
                    return self._send(200, server.cancel(parts[1]))
            except KeyError as exc:
                return self._send(404, {"error": {"message": f"no such object: {exc}", "type": "invalid_request"}})
            self._send(404, {"error": {"message": f"not found: {method} {url.path}", "type": "invalid_request"}})

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self._route("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._route("POST")

    return Handler
