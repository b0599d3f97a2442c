"""A small HTTP proxy in front of moto's S3 server that injects the faults
of issue 13. The mode is read from a file at every request:

    pass      forward
    slowdown  answer 503 SlowDown (S3 error document, Retry-After: 1)
    reset     read the request head and half the body, then reset the connection
    lost      forward (the object is stored), then close without answering
    deny      answer 403 InvalidAccessKeyId

    s3_fault_proxy.py --listen PORT --upstream PORT --mode-file FILE

Each request is logged as one JSON line on stdout (method, path, mode,
status)."""
import argparse, http.client, json, socket, struct, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ERR = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
       '<Message>{msg}</Message><RequestId>fault-proxy</RequestId></Error>')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--upstream", type=int, required=True)
    ap.add_argument("--mode-file", required=True)
    a = ap.parse_args()
    lock = threading.Lock()

    def log(**kw):
        with lock:
            print(json.dumps(kw), flush=True)

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def mode(self):
            try:
                return open(a.mode_file).read().strip() or "pass"
            except OSError:
                return "pass"

        def error(self, status, code, msg, extra=()):
            body = ERR.format(code=code, msg=msg).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            for k, v in extra:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def reset(self):
            # SO_LINGER 0: close sends a RST.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()

        def handle_any(self):
            m = self.mode()
            n = int(self.headers.get("Content-Length") or 0)
            if m == "reset":
                self.rfile.read(n // 2)
                log(method=self.command, path=self.path, mode=m, status=None)
                return self.reset()
            body = self.rfile.read(n) if n else b""
            if m == "slowdown":
                log(method=self.command, path=self.path, mode=m, status=503)
                return self.error(503, "SlowDown", "Please reduce your request rate.", [("Retry-After", "1")])
            if m == "deny":
                log(method=self.command, path=self.path, mode=m, status=403)
                return self.error(403, "InvalidAccessKeyId",
                                  "The AWS Access Key Id you provided does not exist in our records.")
            up = http.client.HTTPConnection("127.0.0.1", a.upstream, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
            up.request(self.command, self.path, body=body, headers=headers)
            r = up.getresponse()
            data = r.read()
            log(method=self.command, path=self.path, mode=m, status=r.status)
            if m == "lost":
                return self.reset()
            self.send_response(r.status)
            for k, v in r.getheaders():
                if k.lower() not in ("connection", "transfer-encoding", "content-length", "server", "date"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = handle_any

    srv = ThreadingHTTPServer(("127.0.0.1", a.listen), H)
    srv.daemon_threads = True
    print(json.dumps({"listening": a.listen}), flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
