#!/usr/bin/env python3
"""A loopback OCSP responder for the demo and the integration tests.

Every request is answered by `openssl ocsp` in responder mode (-reqin/-respout) over the PKI that
tests/support/make-pki.sh made, signed by its delegated responder. OpenSSL 3.0's own `openssl ocsp -port`
listens on every interface; this front listens on loopback only, and because index.txt is read for each request,
`make-pki.sh revoke DIR` takes effect on the very next query, without a restart.

    ocsp-responder.py --pki DIR --port PORT [--host 127.0.0.1] [--nmin 5] [--control FILE]

The optional control file is read for every request, so a test can change the responder's behaviour while it runs.
Its first word chooses the answer:
    ok               a signed response from openssl ocsp (also when the file is absent or empty)
    delay SECONDS    the same, after sleeping SECONDS
    hang             accept the request and never answer (until the client gives up)
    http CODE        an HTTP error status with an empty body
    garbage          HTTP 200 whose body is not DER
    trylater         a well-formed OCSPResponse with status tryLater and no body
    close            close the connection without answering
One line per request goes to stderr: "ocsp-responder: <method> <mode> <result>".
"""
import argparse
import base64
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_REQUEST = 64 * 1024
# OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED tryLater(3) }
TRY_LATER = bytes([0x30, 0x03, 0x0A, 0x01, 0x03])


def log(msg):
    sys.stderr.write("ocsp-responder: %s\n" % msg)
    sys.stderr.flush()


class Responder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ocsp-responder"

    def log_message(self, fmt, *args):  # the one line per request is written by handle_ocsp
        pass

    def read_mode(self):
        path = self.server.opts.control
        if not path:
            return ["ok"]
        try:
            with open(path, encoding="ascii") as f:
                words = f.read().split()
        except FileNotFoundError:
            return ["ok"]
        return words or ["ok"]

    def sign(self, request_der):
        opts = self.server.opts
        pki = opts.pki
        with tempfile.TemporaryDirectory(prefix="ocsp-responder.") as tmp:
            req_path = os.path.join(tmp, "req.der")
            resp_path = os.path.join(tmp, "resp.der")
            with open(req_path, "wb") as f:
                f.write(request_der)
            cmd = ["openssl", "ocsp", "-index", os.path.join(pki, "index.txt"),
                   "-CA", os.path.join(pki, "ca.pem"),
                   "-rsigner", os.path.join(pki, "ocsp.pem"), "-rkey", os.path.join(pki, "ocsp.key"),
                   "-nmin", str(opts.nmin), "-reqin", req_path, "-respout", resp_path]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20, check=False)
            if proc.returncode != 0 or not os.path.exists(resp_path):
                raise RuntimeError(proc.stderr.decode(errors="replace").strip().replace("\n", "; "))
            with open(resp_path, "rb") as f:
                return f.read()

    def answer(self, status, body, ctype="application/ocsp-response"):
        self.send_response(status)
        if body:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def handle_ocsp(self, request_der):
        mode = self.read_mode()
        kind = mode[0]
        result = kind
        try:
            if kind == "close":
                self.close_connection = True
                return
            if kind == "hang":
                # Keep the connection open without a byte until the client leaves or the server stops.
                while not self.server.stopping.wait(0.2):
                    pass
                self.close_connection = True
                return
            if kind == "http":
                code = int(mode[1]) if len(mode) > 1 else 500
                result = "http %d" % code
                self.answer(code, b"")
                return
            if kind == "garbage":
                self.answer(200, b"this is not an OCSP response\n")
                return
            if kind == "trylater":
                self.answer(200, TRY_LATER)
                return
            if kind == "delay":
                seconds = float(mode[1]) if len(mode) > 1 else 5.0
                result = "delay %g" % seconds
                time.sleep(seconds)
            elif kind != "ok":
                result = "ok (unknown mode %r)" % kind
            if request_der is None:
                self.answer(400, b"")
                result += " bad-request"
                return
            self.answer(200, self.sign(request_der))
        except (RuntimeError, subprocess.SubprocessError, ValueError) as e:
            result += " error: %s" % e
            self.answer(500, b"")
        except (BrokenPipeError, ConnectionResetError):
            result += " client-gone"
        finally:
            log("%s %s" % (self.command, result))

    def do_POST(self):
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0 or length > MAX_REQUEST:
            self.answer(413, b"")
            self.close_connection = True
            return
        self.handle_ocsp(self.rfile.read(length))

    def do_GET(self):
        # RFC 6960 Appendix A: GET {url}/{url-encoding of base-64 encoding of the DER request}
        path = urllib.parse.urlsplit(self.path).path
        encoded = urllib.parse.unquote(path.rsplit("/", 1)[-1])
        try:
            der = base64.b64decode(encoded, validate=True) if encoded else None
        except ValueError:
            der = None
        self.handle_ocsp(der)


def main():
    ap = argparse.ArgumentParser(description="Loopback OCSP responder over a make-pki.sh PKI.")
    ap.add_argument("--pki", required=True, help="directory made by tests/support/make-pki.sh")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--nmin", type=int, default=5, help="minutes until nextUpdate (default 5)")
    ap.add_argument("--control", help="file whose first word chooses the answer (see the module text)")
    opts = ap.parse_args()
    for name in ("index.txt", "ca.pem", "ocsp.pem", "ocsp.key"):
        if not os.path.isfile(os.path.join(opts.pki, name)):
            sys.exit("ocsp-responder: %s is missing in %s (run tests/support/make-pki.sh)" % (name, opts.pki))

    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 64
    server = ThreadingHTTPServer((opts.host, opts.port), Responder)
    server.opts = opts
    server.stopping = threading.Event()
    log("listening on http://%s:%d/ for %s" % (opts.host, opts.port, os.path.abspath(opts.pki)))
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.stopping.set()
        server.server_close()


def on_sigterm(_signum, _frame):
    # SIGTERM ends the process the way Ctrl-C does, so callers can stop it with a plain kill.
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_sigterm)
    main()
