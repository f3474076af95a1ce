"""The e2e tier's "outside world": a plain HTTP server on a network only the egress
proxy joins, answering under several host names (network aliases).

Each page names the host it was served for, so a test can tell which host answered.
Run inside a container: ``python outside_world.py`` (port 80).
"""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REDIRECTS = {
    "/to-denied": "http://denied.example.test/secret",
    "/to-metadata": "http://169.254.169.254/latest/meta-data/",
    "/to-mesh": "http://orchestrator:8080/tasks",
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        host = (self.headers.get("host") or "").split(":")[0]
        path = self.path.split("?")[0]
        if path in REDIRECTS:
            self.send_response(302)
            self.send_header("location", REDIRECTS[path])
            self.send_header("content-length", "0")
            self.end_headers()
            return
        body = (
            f"<html><body><h1>outside world</h1><p>page {path} served to {host}</p></body></html>"
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        print(f"outside: {self.headers.get('host')} {format % args}", flush=True)


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", 80), Handler).serve_forever()
