#!/usr/bin/env python3
"""Print every batch of a neuroedge journal as one JSON line (header fields
plus markers, gaps and clock steps), decoded with ordinary libraries.

Usage: dump_batches.py JOURNAL KEYFILE
"""
import json, os, sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))
from journal_reader import read_journal  # noqa: E402


def main():
    journal, keyfile = sys.argv[1], sys.argv[2]
    for h, p in read_journal(journal, keyfile):
        device, seq = h["device_id"], h["seq"]
        print(json.dumps({
            "device_id": device, "seq": seq, "first_sample": h["first_sample"],
            "n_samples": h["n_samples"], "t_start": h["t_start"], "t_end": h["t_end"],
            "markers": p["markers"], "gaps": p["gaps"],
            "clock_steps": p.get("clock_steps", []),
        }))


if __name__ == "__main__":
    main()
