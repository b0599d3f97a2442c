#!/usr/bin/env python3
"""An LSL peer for neuroedge's LSL driver tests (pylsl).

Publishes, in real time until killed (or --seconds):
- an EEG outlet: --channels float32 channels at --rate Hz, labelled
  C1..Cn in desc/channels; sample n of run r is `sample_values(r, n, ch)`
  (channel 0 = n, channel 1 = r, the others arbitrary bit patterns), pushed
  with the explicit timestamp t0 + n / rate (LSL local clock);
- with --markers NAME, a string outlet sending "m<run>-<k>" every
  --marker-every seconds, stamped with the local clock at the push.

Writes JSON lines to --log: one {"run", "t0", "wall_minus_lsl", "rate"}
at start, then {"marker": value, "t": lsl time} per marker pushed (and with
--hold, {"run_last", "last_sample"} when it stops pushing).
check_lsl.py recomputes everything from these.
"""
import argparse, json, struct, sys, time

import pylsl


def mix(x):
    """splitmix64 finaliser: deterministic, well spread bits."""
    m = (1 << 64) - 1
    x = (x + 0x9E3779B97F4A7C15) & m
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    return x ^ (x >> 31)


def sample_values(run, n, channels):
    """The float32 values of sample n of a run: n, run, then finite floats
    with random sign and mantissa and exponents 2^-27 .. 2^23 (every bit
    pattern matters for the bit-exact check)."""
    out = [float(n), float(run)]
    for c in range(2, channels):
        h = mix((run << 40) ^ (n << 8) ^ c)
        sign = (h >> 63) & 1
        exponent = 100 + (h >> 32) % 51
        mantissa = h & 0x7FFFFF
        bits = (sign << 31) | (exponent << 23) | mantissa
        out.append(struct.unpack("<f", struct.pack("<I", bits))[0])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--type", default="EEG")
    ap.add_argument("--source-id", default="")
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--rate", type=float, default=250.0)
    ap.add_argument("--run", type=int, default=1)
    ap.add_argument("--markers")
    ap.add_argument("--marker-every", type=float, default=0.37)
    ap.add_argument("--seconds", type=float, default=3600.0)
    ap.add_argument("--log", required=True)
    ap.add_argument("--unix-stamps", action="store_true",
                    help="stamp samples with unix time instead of the LSL clock "
                         "(a misbehaving outlet)")
    ap.add_argument("--hold", action="store_true",
                    help="wait for a consumer before starting; after --seconds, stop "
                         "pushing but keep the outlets open, logging "
                         '{"last_sample": n} (the last sample pushed)')
    ap.add_argument("--irregular-name",
                    help="also publish an irregular-rate float stream of this name")
    a = ap.parse_args()

    info = pylsl.StreamInfo(a.name, a.type, a.channels, a.rate, "float32", a.source_id)
    chans = info.desc().append_child("channels")
    for c in range(a.channels):
        ch = chans.append_child("channel")
        ch.append_child_value("label", f"C{c + 1}")
        ch.append_child_value("unit", "microvolts")
    outlet = pylsl.StreamOutlet(info)
    marker_outlet = None
    if a.markers:
        minfo = pylsl.StreamInfo(a.markers, "Markers", 1, 0, "string",
                                 (a.source_id + "-markers") if a.source_id else "")
        marker_outlet = pylsl.StreamOutlet(minfo)

    irregular = None
    if a.irregular_name:
        irregular = pylsl.StreamOutlet(
            pylsl.StreamInfo(a.irregular_name, "EEG", 2, pylsl.IRREGULAR_RATE, "float32", ""))
    log = open(a.log, "a", buffering=1)
    if a.hold and not outlet.wait_for_consumers(60):
        return 1
    t0 = pylsl.local_clock() + 0.05
    log.write(json.dumps({"run": a.run, "t0": t0, "rate": a.rate,
                          "wall_minus_lsl": time.time() - pylsl.local_clock()}) + "\n")
    # Unix stamps: the same instants, on the wall clock.
    shift = (time.time() - pylsl.local_clock()) if a.unix_stamps else 0.0
    n, k = 0, 0
    next_marker = t0 + a.marker_every
    while True:
        now = pylsl.local_clock()
        if now - t0 > a.seconds:
            if a.hold:
                log.write(json.dumps({"run_last": a.run, "last_sample": n - 1}) + "\n")
                while True:
                    time.sleep(1)
            break
        while t0 + n / a.rate <= now:
            outlet.push_sample(sample_values(a.run, n, a.channels), t0 + n / a.rate + shift)
            n += 1
        if irregular is not None and n % 50 == 0:
            irregular.push_sample([1.0, 2.0])
        if marker_outlet is not None and now >= next_marker:
            value = f"m{a.run}-{k}"
            t = pylsl.local_clock()
            marker_outlet.push_sample([value], t)
            log.write(json.dumps({"marker": value, "t": t}) + "\n")
            k += 1
            next_marker += a.marker_every
        time.sleep(0.004)
    return 0


if __name__ == "__main__":
    sys.exit(main())
