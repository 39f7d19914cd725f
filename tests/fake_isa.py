"""Local fakes of the isA services our adapters call (user_360, intelligent_query, isA_Creative), one HTTP server
per service, each switchable between the failure modes the adapters must survive:

    ok         answers as the service would
    503        503 Service Unavailable with a reason
    hang       accepts the request and answers nothing for HANG_SECONDS (the client's timeout fires first)
    malformed  200 with a body that is not the documented document
    refused    not listening: connections are refused (stop(); start() listens on the same port again)

Tests run one in a thread (`with FakeService("user_360") as fake: fake.mode = "503"`). For a live check under
`make run`, `python -m tests.fake_isa <service> --port P [--mode M] [--members FILE]` serves one until killed (kill
it for "refused", start it again to recover).
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

HANG_SECONDS = 30.0
SERVICES = ("user_360", "intelligent_query", "isa_creative")


def default_profile(external_id: str) -> dict[str, Any]:
    """What the fake user_360 knows about anyone: other addresses than ours (which must never be used), no phone,
    a nested object and an attribute."""
    return {
        "external_id": external_id,
        "email": f"elsewhere-{external_id}@user360.example",
        "first_name": "Profiled",
        "loyalty": {"tier": "gold", "points": 1200},
        "attributes": {"plan": "from user_360"},
    }


class FakeService:
    def __init__(self, service: str, *, port: int = 0, mode: str = "ok") -> None:
        assert service in SERVICES, service
        self.service = service
        self.mode = mode
        self.port = port
        self.requests: list[tuple[str, str, Any]] = []
        # user_360: None knows everyone (default_profile); a dict knows only its keys.
        self.profiles: dict[str, dict[str, Any]] | None = None
        # intelligent_query: pre-built segments (id → name and member ids) and what any free query answers.
        self.segments: dict[str, dict[str, Any]] = {}
        self.query_ids: list[str] = []
        self.page_size = 1000
        # isA_Creative: its templates (id → template document).
        self.templates: dict[str, dict[str, Any]] = {}
        self._released = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeService:
        self._released.clear()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_port
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening: from now on connections are refused (the port stays reserved for start())."""
        self._released.set()  # hanging requests end
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- answers --------------------------------------------------------------------------------------------

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        self.requests.append((method, path, body))
        if self.mode == "503":
            return 503, {"detail": f"{self.service} is down for maintenance"}
        if self.mode == "hang":
            self._released.wait(HANG_SECONDS)
            return 503, {"detail": "too late"}
        if self.mode == "malformed":
            return 200, b"<html>upstream proxy error</html>"
        route: Callable[[str, Any], tuple[int, Any]] = getattr(self, f"_{self.service}")
        return route(method, path, body)

    def _user_360(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if method != "POST" or not path.endswith("/users/batch"):
            return 404, {"detail": "no such route"}
        ids = body.get("external_ids", [])
        if self.profiles is None:
            return 200, {"users": [default_profile(i) for i in ids]}
        return 200, {"users": [self.profiles[i] for i in ids if i in self.profiles]}

    def _intelligent_query(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        split = urlsplit(path)
        if method == "GET" and split.path == "/segments":
            return 200, {
                "segments": [
                    {"id": key, "name": s["name"], "size": len(s["members"]), "updated_at": s["updated_at"]}
                    for key, s in self.segments.items()
                ]
            }
        if method == "POST" and split.path == "/query":
            if body.get("segment") is not None:
                segment = self.segments.get(body["segment"])
                if segment is None:
                    return 404, {"detail": f"no segment {body['segment']}"}
                ids = segment["members"]
            else:
                ids = self.query_ids
            start = int(body.get("cursor") or 0)
            end = start + self.page_size
            return 200, {"user_ids": ids[start:end], "next_cursor": str(end) if end < len(ids) else None}
        return 404, {"detail": "no such route"}

    def _isa_creative(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        split = urlsplit(path)
        parts = split.path.strip("/").split("/")
        if method != "GET" or len(parts) < 3 or parts[0] != "organisations" or parts[2] != "templates":
            return 404, {"detail": "no such route"}
        if len(parts) == 4:
            found = self.templates.get(parts[3])
            return (200, found) if found else (404, {"detail": "unknown template"})
        channel = parse_qs(split.query).get("channel", [None])[0]
        return 200, {"templates": [t for t in self.templates.values() if channel in (None, t.get("channel"))]}


def _handler(fake: FakeService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else {}
            status, answer = fake.answer(method, self.path, body)
            data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass  # the client gave up (its timeout) before a hanging answer

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("service", choices=SERVICES)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", default="ok", choices=["ok", "503", "hang", "malformed"])
    parser.add_argument("--members", help="a file of external ids, one a line: the query's and segments' members")
    args = parser.parse_args()
    fake = FakeService(args.service, port=args.port, mode=args.mode)
    if args.members:
        with open(args.members) as lines:
            ids = [line.strip() for line in lines if line.strip()]
        fake.query_ids = ids
        fake.segments = {
            "vip-buyers": {"name": "VIP buyers", "members": ids[: len(ids) // 2], "updated_at": "2026-12-01T09:00:00Z"}
        }
    fake.templates = {
        "welcome": {
            "id": "welcome",
            "name": "Welcome (isA_Creative)",
            "channel": "email",
            "description": "From the creative library",
            "content": {"subject": "Welcome {{ contact.first_name }}", "html": "<p>Hello</p>"},
        }
    }
    fake.start()
    print(f"{args.service} fake on {fake.url} ({args.mode})", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
