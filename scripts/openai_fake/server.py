"""HTTP: routing, API-key checks, injected faults, and the server objects tests and the script
run (`serve()` in a background thread, `make_server()` for the script's own loop)."""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import json
import random
import re
import socket
import string
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from . import chat, files, jobs, models
from .api import ROUTES, ApiError, page
from .faults import described, fault_error, find_fault
from .settings import Fault, load_settings
from .state import FakeOpenAI

_PATTERNS = [(route, route.split(" ", 1)[0], re.compile("^" + route.split(" ", 1)[1].replace("{id}", "(?P<id>[^/]+)") + "$"))
             for route in ROUTES]
JSON = "application/json"
NO_KEY = ("You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer "
          "auth (i.e. Authorization: Bearer YOUR_KEY).")


def match_route(method: str, path: str) -> tuple[str | None, dict[str, str]]:
    for name, verb, pattern in _PATTERNS:
        match = pattern.match(path)
        if match and verb == method:
            return name, match.groupdict()
    return None, {}


def parse_multipart(content_type: str, body: bytes) -> dict[str, Any]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not message.is_multipart():
        raise ApiError(400, "Expected a multipart/form-data body.")
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        fields[name] = (filename, payload) if filename is not None else payload.decode("utf-8", "replace")
    return fields


def json_body(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}")
    except json.JSONDecodeError:
        raise ApiError(400, "We could not parse the JSON body of your request.") from None
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return data


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "refit-openai-server/1"
    # Headers and body go out in two writes; with Nagle's algorithm on, the second waits for
    # the client's delayed ACK (~40 ms per response on Linux loopback).
    disable_nagle_algorithm = True
    api: FakeOpenAI  # set on the subclass made by make_server
    verbose = False

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.verbose:
            sys.stderr.write("%s %s\n" % (self.address_string(), format % args))

    def do_GET(self) -> None:
        self.dispatch("GET")

    def do_POST(self) -> None:
        self.dispatch("POST")

    def do_DELETE(self) -> None:
        self.dispatch("DELETE")

    # ---- plumbing
    def send(self, status: int, payload: Any, headers: dict[str, str] | None = None, raw: bytes | None = None,
             content_type: str = JSON) -> None:
        body = raw if raw is not None else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("x-request-id", "req_" + "".join(random.choices(string.hexdigits.lower(), k=24)))
            self.send_header("openai-version", "2020-10-01")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout): nothing to do
            self.close_connection = True

    def drop(self) -> None:
        """Close the socket without a response: the client sees a dropped connection."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    # ---- one request
    def dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if url.path == "/_debug/state" and method == "GET":
            return self.send(200, self.api.snapshot())
        route, params = match_route(method, url.path)
        record, n = self.api.record(route or f"{method} {url.path}", method, url.path)
        refusal = self.refusal(route, method, url.path)
        if refusal is not None:
            record["status"] = refusal.status
            return self.send(refusal.status, refusal.body())
        fault = find_fault(self.api.settings.faults, route, n)
        if fault is not None and self.inject(fault, record):
            return
        org = self.headers.get("OpenAI-Organization") or "org-local"
        try:
            status, payload, raw, ctype = self.handle_route(route, params, query, body, org)
        except ApiError as exc:
            status, payload, raw, ctype = exc.status, exc.body(), None, JSON
        record["status"] = status
        if fault is not None and fault.drop == "after":
            record["status"] = "dropped"
            return self.drop()
        self.send(status, payload, {"openai-organization": org}, raw=raw, content_type=ctype)

    def refusal(self, route: str | None, method: str, path: str) -> ApiError | None:
        """The 404 for an unknown route, or the 401 for a missing or (with api_keys set) unknown key."""
        if route is None:
            return ApiError(404, f"Invalid URL ({method} {path})")
        auth = self.headers.get("Authorization", "")
        key = auth[len("Bearer "):].strip() if auth.startswith("Bearer ") else ""
        if not key:
            return ApiError(401, NO_KEY)
        if self.api.settings.api_keys is not None and key not in self.api.settings.api_keys:
            masked = key[:8] + "*" * max(len(key) - 12, 0) + key[-4:] if len(key) > 12 else "*" * len(key)
            return ApiError(401, f"Incorrect API key provided: {masked}. You can find your API key at "
                                 "https://platform.openai.com/account/api-keys.", code="invalid_api_key")
        return None

    def inject(self, fault: Fault, record: dict[str, Any]) -> bool:
        """Apply a fault's delay, then its drop-before or error status; True when that ended the request."""
        record["fault"] = described(fault)
        if fault.delay_s:
            time.sleep(fault.delay_s)
        if fault.drop == "before":
            record["status"] = "dropped"
            self.drop()
            return True
        if fault.status:
            record["status"] = fault.status
            error, headers = fault_error(fault)
            self.send(fault.status, error.body(), headers)
            return True
        return False

    def handle_route(self, route: str, params: dict[str, str], query: dict[str, str], body: bytes,
                     org: str) -> tuple[int, Any, bytes | None, str]:
        api = self.api
        if route == "POST /v1/chat/completions":  # outside the lock: completions run concurrently
            result = chat.chat(api, json_body(body))
            if api.settings.chat_latency_s:
                time.sleep(api.settings.chat_latency_s)
            return 200, result, None, JSON
        with api.lock:
            if route == "POST /v1/files":
                ctype = self.headers.get("Content-Type", "")
                if not ctype.startswith("multipart/form-data"):
                    raise ApiError(400, "Uploads must be multipart/form-data.")
                return 200, files.upload(api, parse_multipart(ctype, body)), None, JSON
            if route == "GET /v1/files":
                return 200, files.list_files(api, query), None, JSON
            if route == "GET /v1/files/{id}":
                return 200, files.get_file(api, params["id"]).obj, None, JSON
            if route == "GET /v1/files/{id}/content":
                return 200, None, files.file_content(api, params["id"]), "application/octet-stream"
            if route == "POST /v1/fine_tuning/jobs":
                return 200, jobs.create_job(api, json_body(body), org), None, JSON
            if route == "GET /v1/models/{id}":
                return 200, models.retrieve(api, params["id"]), None, JSON
            if route == "GET /v1/fine_tuning/jobs":
                return 200, jobs.list_jobs(api, query), None, JSON
            job = jobs.get_job(api, params["id"])
            if route == "GET /v1/fine_tuning/jobs/{id}":
                return 200, dict(job.obj), None, JSON
            if route == "GET /v1/fine_tuning/jobs/{id}/events":
                return 200, page(job.events[::-1], query, default_limit=20), None, JSON
            if route == "GET /v1/fine_tuning/jobs/{id}/checkpoints":
                return 200, page(job.checkpoints[::-1], query, default_limit=10), None, JSON
            if route == "POST /v1/fine_tuning/jobs/{id}/cancel":
                return 200, jobs.cancel(api, params["id"]), None, JSON
        raise ApiError(404, f"Invalid URL ({route})")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


@dataclass
class Server:
    """A running server: its base URL (with /v1) and the live API state."""

    url: str
    state: FakeOpenAI
    httpd: ThreadingHTTPServer
    thread: threading.Thread

    @property
    def jobs_created(self) -> int:
        return self.state.jobs_created

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def make_server(config: dict[str, Any] | str | Path | None = None, host: str = "127.0.0.1", port: int = 0,
                verbose: bool = False) -> tuple[ThreadingHTTPServer, FakeOpenAI]:
    state = FakeOpenAI(load_settings(config))
    handler = type("BoundHandler", (Handler,), {"api": state, "verbose": verbose})
    return _Server((host, port), handler), state


@contextlib.contextmanager
def serve(config: dict[str, Any] | str | Path | None = None, host: str = "127.0.0.1", port: int = 0,
          verbose: bool = False) -> Iterator[Server]:
    """Run the server in a background thread for the duration of the block."""
    httpd, state = make_server(config, host, port, verbose)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server = Server(f"http://{host}:{httpd.server_address[1]}/v1", state, httpd, thread)
    try:
        yield server
    finally:
        server.close()
