"""Kaggle's API on the loopback address, for the kaggle package's own client in tests.

The package's KaggleApi builds every URL from kagglesdk's endpoint table, for production unless
KAGGLE_API_ENVIRONMENT=LOCALHOST (http://localhost, port 80) when it is first imported; other
values of that variable, TEST (localhost:7777) included, reach only kagglesdk's bare client. So the
`kaggle_server` fixture points the table's production entry (api.kaggle.com) at a server on a
free port here, and each call the package makes arrives as it would at Kaggle: a POST of JSON to
/v1/<service>/<method> with basic auth from KAGGLE_USERNAME/KAGGLE_KEY, or a bearer token. A
`kaggle` command in a subprocess gets there through `subprocess_env`. The server answers with
Kaggle's JSON (and Kaggle's {"code", "message"} body for a refusal), takes uploads on the URLs
it hands out, serves a kernel's output files, and redirects archive downloads where a test
says. Each request is recorded (method, path, headers, JSON body, raw body). HTTPS goes through
a proxy on a closed port, so nothing the package might send elsewhere leaves the machine.
"""
import base64
import contextlib
import email.utils
import http.server
import json
import os
import socket
import tempfile
import threading
import urllib.parse
from dataclasses import dataclass, field

import pytest

LIFETIME = 120  # seconds: a server a test forgot to stop stops by itself
MAX_REQUESTS = 1000  # recorded; more is a test gone wrong, answered 429
USERNAME, KEY = "someone", "0" * 32  # the fake credentials the fixture sets
TOKEN = "KGAT_" + "1" * 32  # a fake access token, the one the server takes as USERNAME's


@dataclass
class Request:
    method: str
    path: str
    headers: dict
    body: bytes
    json: dict = field(default_factory=dict)

    @property
    def call(self) -> str:
        """The API method of a /v1/<service>/<method> request, else ''."""
        parts = self.path.split("/")
        return parts[3] if self.method == "POST" and len(parts) == 4 and parts[1] == "v1" else ""

    def credentials(self) -> "tuple[str, str] | str | None":
        """(user, key) of basic auth, the bearer token, or None."""
        kind, _, value = self.headers.get("Authorization", "").partition(" ")
        return {"Basic": lambda: tuple(base64.b64decode(value).decode().split(":", 1)),
                "Bearer": lambda: value}.get(kind, lambda: None)()


class KaggleServer:
    """A loopback HTTP server that answers as Kaggle's API does. Tests set: refuse[method] = an
    HTTP status or (status, message), to refuse that call as Kaggle does; answers[method] = a
    JSON answer in place of the usual one; upload_status, the status of every upload; output, a
    kernel's output files (name -> bytes) and log; archive_url, where a download redirects."""

    def __init__(self):
        self.requests, self.refuse, self.answers = [], {}, {}
        self.upload_status, self.output, self.log, self.archive_url = 200, {}, "", None
        self.uploads = {}  # upload name -> the bytes that arrived
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_request(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                # through the proxy of subprocess_env the path is a whole URL on the package's local endpoint
                path = urllib.parse.urlsplit(self.path).path if "://" in self.path else self.path
                path = path.removeprefix("/api") if path.startswith("/api/v1/") else path
                request = Request(self.command, path, dict(self.headers), body)
                if "json" in self.headers.get("Content-Type", "") and body:
                    request.json = json.loads(body)
                if len(server.requests) >= MAX_REQUESTS:
                    return self.reply(429, {"code": 429, "message": "Too many requests"})
                server.requests.append(request)
                self.reply(*server.answer(request))

            do_GET = do_POST = do_PUT = handle_request

            def reply(self, status, payload, headers=()):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream" if isinstance(payload, bytes)
                                 else "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client that stops reading
                    self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, args=(0.05,), daemon=True)
        self.timer = threading.Timer(LIFETIME, self.http.shutdown)
        self.timer.daemon = True

    def start(self):
        self.thread.start()
        self.timer.start()
        return self

    def stop(self):
        self.timer.cancel()
        self.http.shutdown()
        self.http.server_close()

    def calls(self, method) -> list:
        """The JSON bodies of each call to the API method `method`, in order."""
        return [r.json for r in self.requests if r.call == method]

    def output_page(self, body) -> dict:
        """A kernel's output files a page at a time, as Kaggle lists them: pageSize files from
        pageToken on, and the next page's token while there are more."""
        start, size = int(body.get("pageToken") or 0), int(body.get("pageSize") or 20)
        names = list(self.output)[start:start + size]
        more = start + size < len(self.output)
        return {"files": [{"fileName": name, "url": f"{self.url}/output/{name}"} for name in names],
                "log": self.log, **({"nextPageToken": str(start + size)} if more else {})}

    def answer(self, request):
        """(status, JSON or bytes, headers) as Kaggle gives them."""
        parts = request.path.lstrip("/").split("/", 1)
        if request.method == "PUT" and parts[0] == "upload":
            self.uploads[parts[1]] = request.body
            return self.upload_status, {}
        if request.method == "GET" and parts[0] == "output" and parts[1] in self.output:
            when = email.utils.formatdate(usegmt=True)
            return 200, self.output[parts[1]], [("Last-Modified", when)]
        method, body = request.call, request.json
        if method in self.refuse:
            status, message = (self.refuse[method] if isinstance(self.refuse[method], tuple)
                               else (self.refuse[method], "Permission denied"))
            return status, {"code": status, "message": message}
        if method in self.answers:
            return 200, self.answers[method]
        if method in ("DownloadDataFiles", "DownloadDataset") and self.archive_url:
            return 302, {}, [("Location", self.archive_url)]
        usual = {
            "IntrospectToken": lambda: {"active": body.get("token") == TOKEN, "username": USERNAME},
            "SaveKernel": lambda: {"ref": f"/code/{body.get('slug')}", "versionNumber": 1, "kernelId": 7,
                                   "url": f"https://www.kaggle.com/code/{body.get('slug')}"},
            "ListKernelSessionOutput": lambda: self.output_page(body),
            "StartSubmissionUpload": lambda: {"token": "submission-blob",
                                              "createUrl": f"{self.url}/upload/{body['fileName']}"},
            "CreateSubmission": lambda: {"message": f"Successfully submitted to {body['competitionName']}",
                                         "ref": 42},
            "StartBlobUpload": lambda: {"token": f"blob-{body['name']}",
                                        "createUrl": f"{self.url}/upload/{body['name']}"},
            "CreateDataset": lambda: {"status": "ok", "ref": f"{body['ownerSlug']}/{body['slug']}",
                                      "url": f"https://www.kaggle.com/datasets/{body['ownerSlug']}/{body['slug']}"},
        }
        if method in usual:
            return 200, usual[method]()
        return 404, {"code": 404, "message": "Not found"}  # what else Kaggle has is not here


def closed_port() -> int:
    """A loopback port nothing listens on: a connection to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(server, base: dict) -> dict:
    """`base` for a `kaggle` command in a subprocess whose calls reach `server`: the package's
    local endpoint (KAGGLE_API_ENVIRONMENT=LOCALHOST, http://localhost) through `server` as the
    HTTP proxy, HTTPS refused, the fake credentials."""
    env = {k: v for k, v in base.items() if not k.startswith("KAGGLE_") and not k.lower().endswith("_proxy")}
    return {**env, "KAGGLE_API_ENVIRONMENT": "LOCALHOST", "KAGGLE_USERNAME": USERNAME, "KAGGLE_KEY": KEY,
            "HTTP_PROXY": server.url, "http_proxy": server.url,
            "HTTPS_PROXY": f"http://127.0.0.1:{closed_port()}", "https_proxy": f"http://127.0.0.1:{closed_port()}"}


@pytest.fixture
def kaggle_server(tmp_path, monkeypatch):
    """A KaggleServer that the kaggle package's API calls, with fake credentials in the
    environment and nothing of this machine's Kaggle setup in reach."""
    from kagglesdk import kaggle_env

    from kit import env

    for name in [k for k in os.environ if k.startswith("KAGGLE_") or k.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_USERNAME", USERNAME)
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the package keeps upload state there
    server = KaggleServer().start()
    # LOCAL too: a KAGGLE_API_ENVIRONMENT=LOCALHOST set when the package was imported sticks
    for where in (kaggle_env.KaggleEnv.PROD, kaggle_env.KaggleEnv.LOCAL):
        monkeypatch.setitem(kaggle_env._env_to_endpoint, where, server.url)
    # the kit's own check opens a connection to api.kaggle.com; here that host is the server
    monkeypatch.setattr(env, "reachable", lambda host, port=443, timeout=2.0: host == "api.kaggle.com")
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def range_server(blob: bytes, drop=(), fail_after=None, expire=()):
    """An archive on a loopback web server that serves byte ranges, as the storage Kaggle's
    download calls redirect to does. drop: numbers of the range requests that lose their
    connection halfway; fail_after: every range request after this many loses it; expire: numbers
    of the range requests refused with 403, as a signed URL past its time is. Yields (url,
    the Range header of each range request). A request without a range (the redirect followed)
    gets the whole archive."""
    asked = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.headers["Range"] is None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(blob)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client only wanted the URL
                    self.wfile.write(blob)
                return
            asked.append(self.headers["Range"])
            if len(asked) in expire:
                self.send_response(403)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            first, _, last = self.headers["Range"].removeprefix("bytes=").partition("-")
            start, end = (len(blob) - int(last), len(blob)) if first == "" else (int(first), int(last) + 1)
            body = blob[start:end]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(blob)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if len(asked) in drop or (fail_after is not None and len(asked) > fail_after):
                self.wfile.write(body[:len(body) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/grand-xray-slam-division-a.zip", asked
    finally:
        server.shutdown()
        server.server_close()
