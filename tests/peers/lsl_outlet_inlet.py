#!/usr/bin/env python3
"""A pylsl consumer of neuroedge's LSL outlets (tests/it/outlets.rs).

Resolves `<device>.<stream>` for each --streams name, writes its metadata,
opens an inlet on each (recover=True: an inlet keeps receiving when the
daemon restarts and the outlet comes back with the same source_id), then
pulls until killed (or --seconds), writing JSON lines to --log:

- {"meta": {stream, name, type, source_id, channel_count, nominal_srate,
  channel_format, labels, units, types}} per stream;
- {"clock": {"unix_minus_lsl": ...}}: this machine's unix - LSL clock now;
- {"ready": true} once every inlet is open;
- with --pause-after, {"paused": seconds} and {"resumed": true} around a
  pause in pulling (the inlets stay open, nothing is read);
- {"stream": s, "t": [lsl stamps], "bits": [[float32 bits per channel]]}
  per chunk of a numeric stream (bits: the test compares bit for bit);
- {"stream": "markers", "t": [...], "values": [...]} per marker chunk.
"""
import argparse, json, struct, sys, time

import pylsl


def labels_of(info, n):
    out = {"labels": [], "units": [], "types": []}
    ch = info.desc().child("channels").child("channel")
    for _ in range(n):
        out["labels"].append(ch.child_value("label"))
        out["units"].append(ch.child_value("unit"))
        out["types"].append(ch.child_value("type"))
        ch = ch.next_sibling()
    return out


def resolve(name, timeout):
    found = pylsl.resolve_byprop("name", name, 1, timeout)
    if not found:
        sys.exit(f"no LSL stream named {name} within {timeout} s")
    return found[0]


def meta(stream, inlet):
    info = inlet.info(10.0)
    n = info.channel_count()
    m = {
        "stream": stream,
        "name": info.name(),
        "type": info.type(),
        "source_id": info.source_id(),
        "channel_count": n,
        "nominal_srate": info.nominal_srate(),
        "channel_format": info.channel_format(),
    }
    m.update(labels_of(info, n))
    return m


def bits(sample):
    return [struct.unpack("<I", struct.pack("<f", v))[0] for v in sample]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", required=True)
    ap.add_argument("--streams", required=True, help="comma-separated")
    ap.add_argument("--seconds", type=float, default=3600.0)
    ap.add_argument("--resolve-timeout", type=float, default=30.0)
    ap.add_argument("--log", required=True)
    ap.add_argument("--pause-after", type=float, default=None,
                    help="stop pulling this many seconds after ready (a stuck consumer)")
    ap.add_argument("--pause-for", type=float, default=30.0)
    a = ap.parse_args()
    log = open(a.log, "w", buffering=1)

    def put(obj):
        log.write(json.dumps(obj) + "\n")

    inlets = {}
    for s in a.streams.split(","):
        info = resolve(f"{a.device}.{s}", a.resolve_timeout)
        inlet = pylsl.StreamInlet(info, max_buflen=60, recover=True)
        inlet.open_stream(10.0)
        inlets[s] = inlet
        put({"meta": meta(s, inlet)})
    put({"clock": {"unix_minus_lsl": time.time() - pylsl.local_clock()}})
    put({"ready": True})
    start = time.monotonic()
    end = start + a.seconds
    pause = None if a.pause_after is None else start + a.pause_after
    while time.monotonic() < end:
        if pause is not None and time.monotonic() >= pause:
            put({"paused": a.pause_for})
            time.sleep(a.pause_for)
            put({"resumed": True})
            pause = None
        got = False
        for s, inlet in inlets.items():
            try:
                samples, stamps = inlet.pull_chunk(timeout=0.0, max_samples=4096)
            except pylsl.LostError:
                continue
            if not stamps:
                continue
            got = True
            if s == "markers":
                put({"stream": s, "t": stamps, "values": [x[0] for x in samples]})
            else:
                put({"stream": s, "t": stamps, "bits": [bits(x) for x in samples]})
        if not got:
            time.sleep(0.02)


if __name__ == "__main__":
    main()
