#!/usr/bin/env python3
"""An OpenBCI Cyton (optionally with Daisy) behind a pseudo-terminal, for the
serial driver tests. Standard library only.

Usage: cyton_emulator.py --link PATH --log LOG.json [--daisy] [--mute] [--seed N]

PATH becomes a symlink to the pty's slave side (the daemon's `port`). The
board answers `v` (soft reset: a banner ending in `$$$`; the packet counter
restarts), `C` / `c` (16 / 8 channels, answered as the real firmware does),
`b` (stream at 250 packets/s in real time) and `s` (stop). With --mute it
answers nothing (a board switched off behind a plugged-in dongle).

Sample values are deterministic: see `counts()`. Without Daisy, packet p
(0, 1, 2, ... since the reset) carries counts(p, 0..8). With Daisy, packet 0
is the invalid first sample, packet 2k+1 carries counts(k, 0..8) and packet
2k+2 counts(k, 8..16); frame k is the pair.

Faults are scripted on stdin, one command per line:

    drop N        the next N packets are not sent (time and counter move on)
    garbage N     N random bytes (never 0xA0) before the next packet
    fake          a truncated packet (0xA0, a wrong counter, a few bytes)
                  before the next packet, chosen so that it cannot pass
                  the driver's resync check
    unplug SECS   close the pty, remove the link; after SECS seconds a new
                  pty appears behind the same link (the board is reset)
    quit          write the log and exit (so does end of input or SIGTERM)

The log (JSON) records what was done, packet numbers counted since the last
reset: {"daisy", "resets": [...], "packets_sent", "drops": [{"first", "count"}],
"garbage": [...], "fakes": [...], "unplugs": [...], "first_packet_unix"}.
"""
import argparse, json, os, random, select, signal, sys, time, tty

RATE = 250.0
HEADER, FOOTER = 0xA0, 0xC0
SPECIAL = [0x7FFFFF, -0x800000, -1, 0, 1, -2, 0x400000, -0x400000]


def counts(n, c):
    """Deterministic 24-bit signed counts of channel c (0..15) at sample n.

    Every 97th sample carries the extremes (0x7FFFFF, 0x800000, -1, 0, ...);
    the others are a hash spread over the whole 24-bit range."""
    if n % 97 == 5:
        return SPECIAL[(c + n // 97) % 8]
    h = (n * 0x9E3779B1 + (c + 1) * 0x85EBCA77) & 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x7FEB352D) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x846CA68B) & 0xFFFFFFFF
    h ^= h >> 16
    v = h & 0xFFFFFF
    return v - 0x1000000 if v >= 0x800000 else v


def packet(counter, values):
    b = bytearray([HEADER, counter & 0xFF])
    for v in values:
        b += (v & 0xFFFFFF).to_bytes(3, "big")
    b += bytes(6)
    b.append(FOOTER)
    assert len(b) == 33
    return bytes(b)


def is_footer(b):
    return 0xC0 <= b <= 0xC6


class Board:
    def __init__(self, link, log_path, daisy, seed, mute=False):
        self.link, self.log_path, self.daisy_present = link, log_path, daisy
        self.mute = mute
        self.rng = random.Random(seed)
        self.log = {"daisy": daisy, "resets": [], "packets_sent": 0, "drops": [],
                    "garbage": [], "fakes": [], "unplugs": [], "first_packet_unix": None,
                    "commands": ""}
        self.master = self.slave = None
        self.out = bytearray()
        self.streaming = False
        self.sixteen = daisy
        self.p = 0
        self.due = 0.0
        self.drop_left = 0
        self.pending = []  # byte strings to put before the next sent packet
        self.pending_fake = False
        self.plug()

    # --- the pty -------------------------------------------------------
    def plug(self):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        tmp = self.link + ".tmp"
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.symlink(os.ttyname(self.slave), tmp)
        os.replace(tmp, self.link)
        self.streaming = False
        self.sixteen = self.daisy_present
        self.out.clear()

    def unplug(self):
        try:
            os.unlink(self.link)
        except FileNotFoundError:
            pass
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass
        self.master = self.slave = None
        self.streaming = False

    # --- commands from the host ----------------------------------------
    def reply(self, text):
        self.out += text.encode()

    def on_byte(self, ch):
        self.log["commands"] += ch
        if self.mute:
            return
        if ch == "v":
            self.streaming = False
            self.sixteen = self.daisy_present
            self.p = 0
            self.log["first_packet_unix"] = None
            self.log["resets"].append(time.time())
            banner = "OpenBCI V3 8-16 channel\nOn Board ADS1299 Device ID: 0x3E\n"
            if self.daisy_present:
                banner += "On Daisy ADS1299 Device ID: 0x3E\n"
            banner += "LIS3DH Device ID: 0x33\nFirmware: v3.1.2\n$$$"
            self.reply(banner)
        elif ch == "C":
            if not self.daisy_present:
                self.reply("no daisy to attach!8$$$")
            elif self.sixteen:
                self.reply("16$$$")
            else:
                self.sixteen = True
                self.reply("daisy attached16$$$")
        elif ch == "c":
            if self.sixteen:
                self.sixteen = False
                self.reply("daisy removed$$$")
        elif ch == "b":
            if not self.streaming:
                self.streaming = True
                self.due = time.monotonic()
        elif ch == "s":
            self.streaming = False

    # --- the stream ------------------------------------------------------
    def make_packet(self, p):
        if not self.sixteen:
            return packet(p, [counts(p, c) for c in range(8)])
        if p == 0:
            return packet(0, [0] * 8)
        if p % 2 == 1:
            k = (p - 1) // 2
            return packet(p, [counts(k, c) for c in range(8)])
        k = (p - 2) // 2
        return packet(p, [counts(k, 8 + c) for c in range(8)])

    def noise(self, n):
        return bytes(self.rng.choice([b for b in range(256) if b != HEADER]) for _ in range(n))

    def fake_before(self, pkt):
        # A truncated packet that cannot pass the driver's checks: its
        # counter does not continue the stream, and byte 33 / 34 of the
        # candidate (which fall into the real packet) are not footer + 0xA0.
        for extra in range(3, 31):
            fake = bytes([HEADER, (self.p + 97) & 0xFF]) + self.noise(extra)
            joined = fake + pkt
            if not (is_footer(joined[32]) and joined[33] == HEADER):
                return fake
        raise RuntimeError("no safe fake")

    def send_due(self):
        now = time.monotonic()
        while self.streaming and self.due <= now:
            p = self.p
            self.p += 1
            self.due += 1.0 / RATE
            if self.drop_left > 0:
                d = self.log["drops"][-1]
                d["count"] += 1
                self.drop_left -= 1
                continue
            pkt = self.make_packet(p)
            for extra in self.pending:
                self.out += extra
            self.pending.clear()
            if self.pending_fake:
                self.out += self.fake_before(pkt)
                self.log["fakes"].append(p)
                self.pending_fake = False
            self.out += pkt
            self.log["packets_sent"] += 1
            if self.log["first_packet_unix"] is None:
                # The wall time packet 0 of this session was due.
                due_p = self.due - 1.0 / RATE
                self.log["first_packet_unix"] = time.time() - (now - due_p) - p / RATE
            self.log["last_packet"] = p

    def flush_out(self):
        if self.master is None or not self.out:
            return
        try:
            n = os.write(self.master, self.out)
            del self.out[:n]
        except BlockingIOError:
            pass
        except OSError:
            self.out.clear()
        if len(self.out) > 1 << 20:
            self.log.setdefault("overflows", 0)
            self.log["overflows"] += 1
            self.out.clear()

    # --- the test's commands --------------------------------------------
    def command(self, line):
        parts = line.split()
        if not parts:
            return True
        cmd, args = parts[0], parts[1:]
        if cmd == "drop":
            n = int(args[0])
            self.log["drops"].append({"first": self.p, "count": 0, "asked": n,
                                      "sixteen": self.sixteen})
            self.drop_left += n
        elif cmd == "garbage":
            n = int(args[0])
            self.pending.append(self.noise(n))
            self.log["garbage"].append({"before": self.p, "bytes": n})
        elif cmd == "fake":
            self.pending_fake = True
        elif cmd == "unplug":
            secs = float(args[0])
            self.log["unplugs"].append({"at": time.time(), "secs": secs})
            self.unplug()
            time.sleep(secs)
            self.plug()
        elif cmd == "quit":
            return False
        return True

    def write_log(self):
        tmp = self.log_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.log, f)
        os.replace(tmp, self.log_path)

    def run(self):
        stdin_buf = b""
        while True:
            fds = [self.master] if self.master is not None else []
            fds.append(sys.stdin.fileno())
            wait = max(0.0, self.due - time.monotonic()) if self.streaming else 0.05
            wfds = [self.master] if (self.master is not None and self.out) else []
            r, w, _ = select.select(fds, wfds, [], min(wait, 0.05))
            if self.master is not None and self.master in r:
                try:
                    data = os.read(self.master, 1024)
                except (BlockingIOError, OSError):
                    data = b""
                for b in data:
                    self.on_byte(chr(b))
            if sys.stdin.fileno() in r:
                data = os.read(sys.stdin.fileno(), 4096)
                if not data:
                    return
                stdin_buf += data
                while b"\n" in stdin_buf:
                    line, stdin_buf = stdin_buf.split(b"\n", 1)
                    if not self.command(line.decode()):
                        return
            self.send_due()
            self.flush_out()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--link", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--daisy", action="store_true")
    ap.add_argument("--mute", action="store_true")
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    board = Board(a.link, a.log, a.daisy, a.seed, a.mute)
    signal.signal(signal.SIGTERM, lambda *_: (board.write_log(), board.unplug(), sys.exit(0)))
    try:
        board.run()
    finally:
        board.write_log()
        board.unplug()


if __name__ == "__main__":
    main()
