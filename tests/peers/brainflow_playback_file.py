#!/usr/bin/env python3
"""Write a recording for BrainFlow's playback board (board_id -3) with the
layout of its synthetic board (master_board -1), using BrainFlow's own
writer (DataFilter.write_file).

Usage: brainflow_playback_file.py PATH

Sample n (0 <= n < 1500, samples 600..699 left out: a lost block):
- EEG row r (1..16): value(n, r) below, exactly representable in f32 and in
  the file's text;
- package-number row: n % 256 (so the lost block is a counter jump of 100);
- timestamp row: n / 250 s after a fixed start (BrainFlow paces playback by
  it, so the lost block is also 0.4 s of silence).
(The playback board does not replay the marker row: BrainFlow fills it only
from insert_marker calls in the process that runs the session.)
"""
import sys

import numpy as np
from brainflow.board_shim import BoardShim
from brainflow.data_filter import DataFilter

N, LOST = 1500, range(600, 700)


def value(n, r):
    """Channel 1 (row 1) is n / 4, which identifies the sample; the others
    are multiples of 1/64 in -64..64."""
    if r == 1:
        return n / 4.0
    return ((n * 37 + r * 101) % 8192) / 64.0 - 64.0


def main():
    rows = BoardShim.get_num_rows(-1)
    ts_row = BoardShim.get_timestamp_channel(-1)
    pkg_row = BoardShim.get_package_num_channel(-1)
    eeg = BoardShim.get_eeg_channels(-1)
    kept = [n for n in range(N) if n not in LOST]
    d = np.zeros((rows, len(kept)))
    for i, n in enumerate(kept):
        for r in eeg:
            d[r, i] = value(n, r)
        d[pkg_row, i] = n % 256
        d[ts_row, i] = 1.7e9 + n / 250.0
    DataFilter.write_file(d, sys.argv[1], "w")
    return 0


if __name__ == "__main__":
    sys.exit(main())
