#!/usr/bin/env python3
"""A line-oriented ASCII serial device behind a pseudo-terminal, for the
serial-ascii driver tests. Standard library only.

Usage: ascii_emulator.py --link PATH --log LOG.json [--rate HZ] [--channels N]
                         [--sep ","]

PATH becomes a symlink to the pty's slave side. From the start the device
prints, at --rate lines per second, line m (m = 0, 1, ...) holding
--channels decimal numbers in varied spellings (integers, fixed point,
exponents, a leading '+', blanks around the numbers, a trailing separator
now and then, CRLF or LF endings). Value strings are deterministic.

Commands on stdin, one per line:

    malformed     send one line of each malformed kind (wrong count, not a
                  number, NaN, empty field, not UTF-8, over 4096 bytes),
                  plus a blank line (which is not malformed)
    pause S       stop sampling for S seconds, the port staying open (a
                  wedged device); lines then go on at the rate
    quit          write the log and exit (so does end of input or SIGTERM)

The log (JSON): {"lines": [[m, [value strings]], ...] for every valid line
written to the pty, "malformed_sent": count, "malformed_kinds": [...]}.
"""
import argparse, json, os, select, signal, sys, time, tty

MALFORMED = [
    ("wrong_count", lambda ch, sep: sep.join(["1"] * (ch - 1)).encode()),
    ("not_a_number", lambda ch, sep: sep.join(["abc"] + ["2"] * (ch - 1)).encode()),
    ("nan", lambda ch, sep: sep.join(["nan"] + ["2"] * (ch - 1)).encode()),
    ("empty_field", lambda ch, sep: sep.join([""] + ["2"] * (ch - 1)).encode()),
    ("not_utf8", lambda ch, sep: b"\xff\xfe" + sep.join(["1"] * ch).encode()[1:]),
    ("too_long", lambda ch, sep: b"1" * 5000),
]


def value_text(m, c):
    """The printed value of channel c in line m: varied spellings."""
    x = ((m * 7919 + c * 104729) % 200003 - 100001) / 37.0
    kind = (m + c) % 6
    if kind == 0:
        return "%d" % int(x)
    if kind == 1:
        return "%.3f" % x
    if kind == 2:
        return "%.6e" % x
    if kind == 3:
        return "+%.2f" % abs(x)
    if kind == 4:
        return "%.7g" % (x / 1000.0)
    return " %.1f " % x


class Device:
    def __init__(self, a):
        self.a = a
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        tmp = a.link + ".tmp"
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.symlink(os.ttyname(self.slave), tmp)
        os.replace(tmp, a.link)
        self.out = bytearray()
        self.log = {"lines": [], "malformed_sent": 0, "malformed_kinds": []}
        self.m = 0
        self.due = time.monotonic()
        self.pending_malformed = False
        self.paused_until = 0.0

    def line(self, m):
        vals = [value_text(m, c) for c in range(self.a.channels)]
        text = self.a.sep.join(vals)
        if m % 11 == 3:
            text += self.a.sep  # one trailing separator is accepted
        end = "\r\n" if m % 2 else "\n"
        return vals, (text + end).encode()

    def send_due(self):
        now = time.monotonic()
        if now < self.paused_until:
            self.due = self.paused_until
            return
        while self.due <= now:
            if self.pending_malformed:
                for kind, make in MALFORMED:
                    self.out += make(self.a.channels, self.a.sep) + b"\n"
                    self.log["malformed_sent"] += 1
                    self.log["malformed_kinds"].append(kind)
                self.out += b"\r\n"  # blank: ignored, not malformed
                self.pending_malformed = False
            vals, raw = self.line(self.m)
            self.out += raw
            self.log["lines"].append([self.m, [v.strip() for v in vals]])
            self.m += 1
            self.due += 1.0 / self.a.rate

    def flush_out(self):
        if not self.out:
            return
        try:
            n = os.write(self.master, self.out)
            del self.out[:n]
        except BlockingIOError:
            # Nobody reads (before the daemon opens the port): a real
            # device's bytes would be lost the same way.
            if len(self.out) > 1 << 16:
                self.out.clear()

    def write_log(self):
        tmp = self.a.log + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.log, f)
        os.replace(tmp, self.a.log)

    def run(self):
        buf = b""
        while True:
            wait = max(0.0, min(0.05, self.due - time.monotonic()))
            r, _, _ = select.select([self.master, sys.stdin.fileno()], [], [], wait)
            if self.master in r:
                try:
                    os.read(self.master, 1024)  # the host says nothing we need
                except OSError:
                    pass
            if sys.stdin.fileno() in r:
                data = os.read(sys.stdin.fileno(), 4096)
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    cmd = line.decode().strip()
                    if cmd == "malformed":
                        self.pending_malformed = True
                    elif cmd.startswith("pause "):
                        self.paused_until = time.monotonic() + float(cmd.split()[1])
                        self.log.setdefault("pauses", []).append(float(cmd.split()[1]))
                    elif cmd == "quit":
                        return
            self.send_due()
            self.flush_out()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--link", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--sep", default=",")
    a = ap.parse_args()
    dev = Device(a)

    def stop(*_):
        dev.write_log()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        dev.run()
    finally:
        dev.write_log()
        try:
            os.unlink(a.link)
        except FileNotFoundError:
            pass


if __name__ == "__main__":
    main()
