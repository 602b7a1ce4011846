#!/usr/bin/env python3
"""Steady API traffic against the nodes of a cluster, recorded request by request, for the outage suite.

    cluster_load.py --out FILE --stop-file FILE --max-seconds S --user NAME --password PW
                    --node NAME=PORT ... [--writer NAME=KEY:START ...] [--readers N] [--pause-ms MS]
                    [--timeout S] [--watch-file NAME=PATH ...] [--watch-pid NAME=PID ...] [--live FILE]

For every node, N clients loop GET /v1/ocsp and N clients loop GET /v1/ocsp/status. A node named by --writer also
gets one client looping PUT /v1/ocsp with a body that sets KEY alone to a new value each time: START, START+1, ...
wrapped into KEY's range, skipping the value of the writer's last acknowledged PUT, so that no PUT is one that
changes nothing (a node answers such a PUT itself, without the store). Each request uses a new connection (as a curl per
request would), is bounded by --timeout, and is recorded once it ends. Every loop stops when the stop file exists,
or after --max-seconds at the latest. A watcher samples every 20 ms whether each --watch-file exists and whether
each --watch-pid is a live process (not a zombie).

FILE gets one tab-separated line per request once everything stopped:
    REQ node method path value status error_code t_start_ms t_end_ms detail
  value       the value the PUT sent ("-" for a GET)
  status      the HTTP status, or 000 when no response came (error_code then names the exception)
  error_code  the body's error_code, "-" when there is none
  detail      GET /v1/ocsp: the three keys the writers change, "query_frequency,recovery_frequency,
              recovery_max_tries"; GET /v1/ocsp/status: "cert_status/state"; a PUT answered with an error:
              "unknown" when the description says the change may or may not have been applied, else "refused";
              otherwise "-"
and one line per watched file and process:
    WATCH name path samples missing first_missing_ms
    PROC name pid samples dead first_dead_ms
Times are wall-clock milliseconds since the epoch, the clock of the agents' log timestamps.

With --live, each REQ line is also appended to that file as soon as its request ends (one write per line), so that a
suite can wait until the load shows what it needs while it runs.
"""
import argparse
import base64
import http.client
import json
import os
import threading
import time

# Each settable integer key's range (the API contract), so that a writer's values stay valid.
RANGES = {
    "query_frequency": (60, 86400),
    "recovery_frequency": (60, 86400),
    "recovery_max_tries": (1, 100),
    "response_timeout": (1, 60),
}
CONF_KEYS = ("query_frequency", "recovery_frequency", "recovery_max_tries")


def now_ms():
    return int(time.time() * 1000)


class Run:
    def __init__(self, opts):
        self.opts = opts
        self.deadline = time.monotonic() + opts.max_seconds
        token = base64.b64encode(("%s:%s" % (opts.user, opts.password)).encode()).decode()
        self.auth = "Basic " + token
        self.lock = threading.Lock()
        self.lines = []
        self.live = open(opts.live, "a", buffering=1) if opts.live else None

    def running(self):
        return time.monotonic() < self.deadline and not os.path.exists(self.opts.stop_file)

    def record(self, fields):
        line = "\t".join(str(f) for f in fields)
        with self.lock:
            self.lines.append(line)
            if self.live is not None and fields[0] == "REQ":
                self.live.write(line + "\n")

    def request(self, port, method, path, body):
        """Returns (status, parsed JSON body or None, error name or None)."""
        headers = {"Authorization": self.auth}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=self.opts.timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            try:
                parsed = json.loads(data.decode("utf-8")) if data else None
            except ValueError:
                parsed = None
            return resp.status, parsed, None
        except Exception as e:  # a failed request is data here, never a crash of the load
            return 0, None, type(e).__name__
        finally:
            conn.close()

    def pause(self):
        if self.opts.pause_ms > 0:
            time.sleep(self.opts.pause_ms / 1000.0)

    def reader(self, node, port, path):
        while self.running():
            t0 = now_ms()
            status, obj, exc = self.request(port, "GET", path, None)
            t1 = now_ms()
            code, detail = error_of(obj, exc), "-"
            if status == 200 and isinstance(obj, dict):
                if path == "/v1/ocsp":
                    detail = ",".join(str(obj.get(k, "?")) for k in CONF_KEYS)
                else:
                    detail = "%s/%s" % (obj.get("cert_status", "?"), obj.get("state", "?"))
            self.record(("REQ", node, "GET", path, "-", "%03d" % status, code, t0, t1, detail))
            self.pause()

    def writer(self, node, port, key, start):
        lo, hi = RANGES[key]
        i = 0
        acked = None
        while self.running():
            value = lo + (start + i - lo) % (hi - lo + 1)
            i += 1
            if value == acked:
                # The node holds this value already: such a PUT changes nothing and is answered without the store.
                continue
            body = json.dumps({key: value})
            t0 = now_ms()
            status, obj, exc = self.request(port, "PUT", "/v1/ocsp", body)
            t1 = now_ms()
            detail = "-"
            if status == 200:
                acked = value
            elif isinstance(obj, dict):
                text = str(obj.get("description", ""))
                detail = "unknown" if "may or may not" in text else "refused"
            self.record(("REQ", node, "PUT", "/v1/ocsp", value, "%03d" % status, error_of(obj, exc), t0, t1,
                         detail))
            self.pause()

    def watcher(self):
        files = [tuple(w.split("=", 1)) for w in self.opts.watch_file]
        pids = [tuple(w.split("=", 1)) for w in self.opts.watch_pid]
        fstat = {name: [0, 0, "-"] for name, _ in files}
        pstat = {name: [0, 0, "-"] for name, _ in pids}
        while self.running():
            for name, path in files:
                s = fstat[name]
                s[0] += 1
                if not os.path.exists(path):
                    s[1] += 1
                    if s[2] == "-":
                        s[2] = now_ms()
            for name, pid in pids:
                s = pstat[name]
                s[0] += 1
                if not proc_alive(pid):
                    s[1] += 1
                    if s[2] == "-":
                        s[2] = now_ms()
            time.sleep(0.02)
        for name, path in files:
            self.record(("WATCH", name, path) + tuple(fstat[name]))
        for name, pid in pids:
            self.record(("PROC", name, pid) + tuple(pstat[name]))


def error_of(obj, exc):
    if exc is not None:
        return exc
    if isinstance(obj, dict) and isinstance(obj.get("error_code"), str):
        return obj["error_code"]
    return "-"


def proc_alive(pid):
    try:
        with open("/proc/%s/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def main():
    ap = argparse.ArgumentParser(description="Recorded API load on the nodes of a cluster.")
    ap.add_argument("--out", required=True)
    ap.add_argument("--stop-file", required=True)
    ap.add_argument("--max-seconds", type=float, required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--node", action="append", default=[], help="NAME=PORT")
    ap.add_argument("--writer", action="append", default=[], help="NAME=KEY:START")
    ap.add_argument("--readers", type=int, default=1)
    ap.add_argument("--pause-ms", type=float, default=5)
    ap.add_argument("--timeout", type=float, default=10)
    ap.add_argument("--watch-file", action="append", default=[], help="NAME=PATH")
    ap.add_argument("--watch-pid", action="append", default=[], help="NAME=PID")
    ap.add_argument("--live", help="FILE: every REQ line also appended here as it ends")
    opts = ap.parse_args()

    run = Run(opts)
    ports = dict(n.split("=", 1) for n in opts.node)
    threads = []
    for name, port in ports.items():
        for _ in range(opts.readers):
            for path in ("/v1/ocsp", "/v1/ocsp/status"):
                threads.append(threading.Thread(target=run.reader, args=(name, int(port), path)))
    for w in opts.writer:
        name, spec = w.split("=", 1)
        key, start = spec.split(":", 1)
        if key not in RANGES or name not in ports:
            ap.error("--writer %s: unknown node or key" % w)
        threads.append(threading.Thread(target=run.writer, args=(name, int(ports[name]), key, int(start))))
    threads.append(threading.Thread(target=run.watcher))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tmp = opts.out + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(run.lines) + "\n")
    os.replace(tmp, opts.out)


if __name__ == "__main__":
    main()
