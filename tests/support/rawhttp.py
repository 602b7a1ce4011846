#!/usr/bin/env python3
"""A raw-socket HTTP/1.1 client for the integration suites: it sends exactly the bytes it is given, which curl
cannot (broken framing, invalid versions, NUL bytes, pipelined bursts), and reports what came back as one JSON
object on stdout, so that the shell suites make their assertions with jq.

Python 3 standard library only. Every socket operation is bounded by a timeout; nothing here can hang a suite.

Subcommands:

  send       send one request file (or string) on one connection and report every response and whether the
             server closed the connection afterwards
  slowloris  hold many connections that each send a partial request and stop, and report how and when the
             server ended each of them
  maxconn    fill the server's connection limit with keep-alive clients, try one connection more, and report
  putstream  PUT a stream of numbered configurations on one keep-alive connection until the connection dies,
             logging each request before it is sent and each acknowledged body

Request files ("escaped raw" format, see tests/data/hostile/README.md): lines starting with '#' are comments;
every other line is joined to the next without its newline; the escapes \\r \\n \\t \\0 \\xHH and \\\\ give exact
bytes; {{AUTH}} and {{VIEWER}} become the Base64 credentials given with --auth and --viewer; {{REPEAT N TEXT}}
(innermost first, so they nest) becomes TEXT written N times; {{BODY}}TEXT{{/BODY}} becomes a Content-Length
header for TEXT's bytes, the blank line that ends the headers, and TEXT.
"""

import argparse
import base64
import errno
import json
import os
import re
import selectors
import socket
import sys
import threading
import time

REPEAT_RE = re.compile(r"\{\{REPEAT (\d+) ((?:(?!\{\{|\}\}).)*)\}\}", re.S)
ESCAPE_RE = re.compile(r"\\(x[0-9a-fA-F]{2}|[rnt0\\])")


def b64(cred):
    return base64.b64encode(cred.encode("utf-8")).decode("ascii")


def expand(text, auth=None, viewer=None):
    """Turns the escaped raw format into the exact bytes to send."""
    lines = [ln for ln in text.split("\n") if not ln.startswith("#")]
    s = "".join(lines)
    while True:
        t = REPEAT_RE.sub(lambda m: m.group(2) * int(m.group(1)), s)
        if t == s:
            break
        s = t
    if auth is not None:
        s = s.replace("{{AUTH}}", b64(auth))
    if viewer is not None:
        s = s.replace("{{VIEWER}}", b64(viewer))
    if re.search(r"\{\{(?!/?BODY\}\})", s):
        raise SystemExit("rawhttp: an unexpanded placeholder is left: " + s[s.index("{{"):][:40])

    def unescape(m):
        e = m.group(1)
        if e[0] == "x":
            return chr(int(e[1:], 16))
        return {"r": "\r", "n": "\n", "t": "\t", "0": "\0", "\\": "\\"}[e]

    out = b""
    # A body between {{BODY}} and {{/BODY}} is preceded by its own Content-Length header and the blank line, so a
    # case never carries a hand-counted length.
    for n, piece in enumerate(re.split(r"\{\{/?BODY\}\}", s)):
        raw = ESCAPE_RE.sub(unescape, piece).encode("latin-1")
        if n % 2 == 1:
            out += b"Content-Length: %d\r\n\r\n" % len(raw)
        out += raw
    return out


class ResponseParser:
    """Splits a byte stream into HTTP/1.x responses framed by Content-Length (the agent always sends it)."""

    def __init__(self):
        self.buf = b""
        self.responses = []
        self.bad = None  # a description of bytes that are not a response

    def feed(self, data):
        self.buf += data
        while self.bad is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            lines = head.split("\r\n")
            m = re.match(r"HTTP/1\.[01] (\d{3}) ?(.*)$", lines[0])
            if not m:
                self.bad = "not a status line: " + lines[0][:80]
                return
            headers = {}
            for ln in lines[1:]:
                if ":" not in ln:
                    self.bad = "not a header line: " + ln[:80]
                    return
                k, v = ln.split(":", 1)
                headers[k.strip().lower()] = v.strip()
            status = int(m.group(1))
            length = 0
            if 100 <= status < 200:
                length = 0
            elif "content-length" in headers:
                try:
                    length = int(headers["content-length"])
                except ValueError:
                    self.bad = "bad Content-Length: " + headers["content-length"]
                    return
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            self.responses.append(describe(status, m.group(2), headers, body))

    def finals(self):
        return [r for r in self.responses if r["status"] >= 200]


def describe(status, reason, headers, body):
    text = body.decode("utf-8", "replace")
    r = {"status": status, "reason": reason, "headers": headers, "body": text, "body_len": len(body)}
    r["json"] = None
    if headers.get("content-type", "").startswith("application/json"):
        try:
            r["json"] = json.loads(text)
        except ValueError:
            r["json"] = None
    j = r["json"]
    r["error_code"] = j.get("error_code") if isinstance(j, dict) else None
    return r


def connect(port, timeout):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_responses(sock, parser, want, deadline, idle, eof_wait):
    """Reads until the server closes, or `want` final responses arrived and then `eof_wait` passed without a close,
    or nothing came for `idle` seconds, or the deadline. Returns (closed, reset)."""
    last = time.monotonic()
    got_all_at = None
    while True:
        now = time.monotonic()
        if want is not None and len(parser.finals()) >= want:
            if got_all_at is None:
                got_all_at = now
            limit = got_all_at + eof_wait
        else:
            limit = min(deadline, last + idle)
        if now >= limit:
            return False, False
        sock.settimeout(max(0.01, limit - now))
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return True, True
        except OSError as e:
            if e.errno in (errno.ECONNRESET, errno.EPIPE):
                return True, True
            raise
        if not data:
            return True, False
        last = time.monotonic()
        parser.feed(data)


def cmd_send(a):
    if a.file:
        with open(a.file, "r", encoding="latin-1") as f:
            payload = expand(f.read(), a.auth, a.viewer)
    else:
        payload = expand(a.data, a.auth, a.viewer)
    start = time.monotonic()
    try:
        sock = connect(a.port, a.timeout)
    except OSError as e:
        json.dump({"connect_error": str(e), "responses": [], "closed": True, "reset": False}, sys.stdout)
        sys.stdout.write("\n")
        return
    state = {"sent": 0, "error": None}
    # The writer has its own descriptor: the reader's short timeouts must not cut a send that waits for room.
    wsock = sock.dup()
    wsock.settimeout(a.timeout)

    def writer():
        try:
            # Byte-at-a-time framing bugs show only when a request arrives in several reads.
            step = max(1, len(payload) // max(1, a.pieces))
            for i in range(0, len(payload), step):
                wsock.sendall(payload[i:i + step])
                state["sent"] += len(payload[i:i + step])
                if a.pieces > 1:
                    time.sleep(0.01)
        except OSError as e:
            # The server may close (413 from Content-Length) before it has read everything we send.
            state["error"] = os.strerror(e.errno) if e.errno else str(e)
        if a.shutdown:
            try:
                wsock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        wsock.close()

    # The bytes go out from a thread so that a burst larger than the socket buffers cannot deadlock against a
    # server that stops reading until its answers are read.
    t = threading.Thread(target=writer, daemon=True)
    t.start()
    if a.read_delay > 0:
        time.sleep(a.read_delay)
    parser = ResponseParser()
    closed, reset = read_responses(sock, parser, a.expect_responses, start + a.timeout, a.idle, a.eof_wait)
    t.join(timeout=1)
    sock.close()
    out = {
        "sent": state["sent"],
        "request_len": len(payload),
        "send_error": state["error"],
        "responses": parser.responses,
        "closed": closed,
        "reset": reset,
        "trailing": parser.buf.decode("latin-1")[:200],
        "unparsable": parser.bad,
        "elapsed_ms": int((time.monotonic() - start) * 1000),
    }
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


def cmd_slowloris(a):
    """Opens a.count connections that stop inside the headers and a.body_count that stop inside a declared body,
    signals readiness, then watches every one of them until the server ends it or a.max_wait passes."""
    partial_head = b"GET /v1/ocsp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic " + b64(a.auth).encode()
    partial_body = (b"PUT /v1/ocsp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic " + b64(a.auth).encode() +
                    b"\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{\"query_frequency\": ")
    sel = selectors.DefaultSelector()
    conns = []
    open_errors = 0
    for i in range(a.count + a.body_count):
        kind = "headers" if i < a.count else "body"
        try:
            s = connect(a.port, 5)
            s.sendall(partial_head if kind == "headers" else partial_body)
        except OSError:
            open_errors += 1
            continue
        s.setblocking(False)
        c = {"kind": kind, "sock": s, "t0": time.monotonic(), "parser": ResponseParser(), "t_end": None,
             "closed": False, "reset": False}
        conns.append(c)
        sel.register(s, selectors.EVENT_READ, c)
    with open(a.ready_file, "w") as f:
        f.write("%d\n" % len(conns))
    deadline = time.monotonic() + a.max_wait
    live = len(conns)
    while live > 0 and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=max(0.01, deadline - time.monotonic())):
            c = key.data
            try:
                data = c["sock"].recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = None
                c["reset"] = True
            if data:
                c["parser"].feed(data)
                continue
            c["closed"] = True
            c["t_end"] = time.monotonic() - c["t0"]
            sel.unregister(c["sock"])
            c["sock"].close()
            live -= 1
    summary = {}
    for c in conns:
        rs = c["parser"].finals()
        key = "%s %s %s %s" % (c["kind"], rs[0]["status"] if rs else "none", (rs[0]["error_code"] if rs else None)
                               or "-", "closed" if c["closed"] else "open")
        e = summary.setdefault(key, {"n": 0, "t_min": None, "t_max": None})
        e["n"] += 1
        if c["t_end"] is not None:
            e["t_min"] = round(c["t_end"] if e["t_min"] is None else min(e["t_min"], c["t_end"]), 2)
            e["t_max"] = round(c["t_end"] if e["t_max"] is None else max(e["t_max"], c["t_end"]), 2)
        if not c["closed"]:
            c["sock"].close()
    json.dump({"opened": len(conns), "open_errors": open_errors, "outcomes": summary}, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")


def get_request(auth, path="/v1/ocsp", close=False):
    return ("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic %s\r\n%s\r\n" %
            (path, b64(auth), "Connection: close\r\n" if close else "")).encode()


def one_exchange(sock, req, timeout):
    """Sends one request on a keep-alive connection and returns its final response, or None."""
    parser = ResponseParser()
    try:
        sock.sendall(req)
        read_responses(sock, parser, 1, time.monotonic() + timeout, timeout, 0)
    except OSError:
        return None
    fin = parser.finals()
    return fin[0] if fin else None


def cmd_maxconn(a):
    out = {}
    held = []
    first_ok = 0
    for _ in range(a.limit):
        s = connect(a.port, 5)
        held.append(s)
        r = one_exchange(s, get_request(a.auth), 5)
        first_ok += 1 if r is not None and r["status"] == 200 else 0
    out["first_round_200"] = first_ok
    # One more than the limit: the server must end it at once, without reading or answering.
    extra = connect(a.port, 5)
    t0 = time.monotonic()
    parser = ResponseParser()
    try:
        extra.sendall(get_request(a.auth))
    except OSError:
        pass
    closed, reset = read_responses(extra, parser, None, t0 + 3, 3, 0)
    out["extra_closed"] = closed
    out["extra_close_ms"] = int((time.monotonic() - t0) * 1000)
    out["extra_responses"] = len(parser.responses)
    extra.close()
    # The held ones still work.
    second_ok = 0
    for s in held:
        r = one_exchange(s, get_request(a.auth), 5)
        second_ok += 1 if r is not None and r["status"] == 200 else 0
    out["second_round_200"] = second_ok
    # Releasing one slot lets a new client in.
    held.pop().close()
    time.sleep(0.3)
    s = connect(a.port, 5)
    r = one_exchange(s, get_request(a.auth), 5)
    out["after_release_status"] = r["status"] if r is not None else None
    s.close()
    for s in held:
        s.close()
    json.dump(out, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")


def conf_for(i):
    """The configuration PUT number i sends: three keys that change together, so a torn state would show."""
    return {"query_frequency": 60 + i % 86000, "response_timeout": 1 + i % 60, "recovery_max_tries": 1 + i % 100}


def cmd_putstream(a):
    log = open(a.log, "a", buffering=1)
    try:
        sock = connect(a.port, 5)
    except OSError as e:
        log.write("ERROR connect %s\n" % e)
        return
    i = a.start
    while a.count <= 0 or i < a.start + a.count:
        body = json.dumps(conf_for(i)).encode()
        req = (b"PUT /v1/ocsp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic " + b64(a.auth).encode() +
               b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" +
               body)
        # Logged before it leaves: when the server dies, this request is the one that may be in flight.
        log.write("SENT %d\n" % i)
        log.flush()
        r = one_exchange(sock, req, 5)
        if r is None:
            log.write("DEAD %d\n" % i)
            break
        if r["status"] != 200:
            log.write("STATUS %d %d\n" % (i, r["status"]))
            break
        log.write("ACK %d %s\n" % (i, json.dumps(r["json"], sort_keys=True)))
        log.flush()
        i += 1
    sock.close()
    log.close()


def main():
    p = argparse.ArgumentParser(description="raw-socket HTTP/1.1 client for the integration suites")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("send")
    s.add_argument("--port", type=int, required=True)
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--file", help="a request in the escaped raw format")
    g.add_argument("--data", help="a request in the escaped raw format, inline")
    s.add_argument("--auth", help="user:password for {{AUTH}}")
    s.add_argument("--viewer", help="user:password for {{VIEWER}}")
    s.add_argument("--expect-responses", type=int, default=None,
                   help="stop reading once this many final responses arrived and --eof-wait passed")
    s.add_argument("--eof-wait", type=float, default=0.5, help="how long to wait for a close after the last one")
    s.add_argument("--idle", type=float, default=3.0, help="give up after this long without a byte")
    s.add_argument("--timeout", type=float, default=10.0, help="the whole exchange")
    s.add_argument("--pieces", type=int, default=1, help="send the request in this many writes")
    s.add_argument("--shutdown", action="store_true", help="half-close the connection after sending")
    s.add_argument("--read-delay", type=float, default=0.0, help="start reading only after this many seconds")

    s = sub.add_parser("slowloris")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--auth", required=True)
    s.add_argument("--count", type=int, default=300)
    s.add_argument("--body-count", type=int, default=0)
    s.add_argument("--max-wait", type=float, default=15.0)
    s.add_argument("--ready-file", required=True)

    s = sub.add_parser("maxconn")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--auth", required=True)
    s.add_argument("--limit", type=int, required=True)

    s = sub.add_parser("putstream")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--auth", required=True)
    s.add_argument("--start", type=int, required=True)
    s.add_argument("--count", type=int, default=0, help="0: until the connection dies")
    s.add_argument("--log", required=True)

    s = sub.add_parser("conf", help="print the configuration PUT number N of putstream sends, as JSON")
    s.add_argument("n", type=int)

    a = p.parse_args()
    if a.cmd == "send":
        cmd_send(a)
    elif a.cmd == "slowloris":
        cmd_slowloris(a)
    elif a.cmd == "maxconn":
        cmd_maxconn(a)
    elif a.cmd == "putstream":
        cmd_putstream(a)
    elif a.cmd == "conf":
        json.dump(conf_for(a.n), sys.stdout, sort_keys=True)
        sys.stdout.write("\n")


if __name__ == "__main__":
    main()
