//! The OpenBCI Cyton byte-stream decoder (8 channels and Daisy) on
//! arbitrary serial bytes, delivered in arbitrary read sizes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use neuroedge::source::openbci_cyton::{Decoder, FrameOut};

struct Out {
    frames: u64,
    skipped: u64,
}

impl FrameOut for Out {
    fn push(&mut self, received: f64, values: &[f32]) {
        assert!(received.is_finite());
        assert!(values.len() == 8 || values.len() == 16);
        self.frames += 1;
    }
    fn missing(&self, _received: f64, counted: u64, modulus: u64) -> u64 {
        assert!(modulus > 0);
        counted % modulus
    }
    fn skip(&mut self, missing: u64) {
        self.skipped = self.skipped.saturating_add(missing);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut d = Decoder::new(mode & 1 == 1);
    let mut out = Out {
        frames: 0,
        skipped: 0,
    };
    // The first byte also picks the read size: 1..=127 bytes per read.
    let step = usize::from(mode >> 1).max(1);
    let mut t = 0.0;
    for chunk in rest.chunks(step) {
        let mut left = chunk;
        while !left.is_empty() {
            let space = d.space();
            let n = space.len().min(left.len());
            if n == 0 {
                d.decode(&mut out);
                continue;
            }
            space[..n].copy_from_slice(&left[..n]);
            left = &left[n..];
            t += 0.004;
            d.received(n, t);
            d.decode(&mut out);
        }
    }
    // Never more frames than complete packets in the input.
    assert!(out.frames <= rest.len() as u64 / 33 * 2 + 1);
});
