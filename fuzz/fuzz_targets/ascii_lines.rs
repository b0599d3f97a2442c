//! The ASCII serial line parser on arbitrary bytes, in arbitrary reads.
#![no_main]
use libfuzzer_sys::fuzz_target;
use neuroedge::source::serial_ascii::LineDecoder;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let channels = usize::from(mode % 8) + 1;
    let sep = if mode & 0x80 != 0 { "," } else { " " };
    let mut d = LineDecoder::new(channels, sep);
    let step = usize::from((mode >> 3) & 0x0f).max(1);
    let mut pushed = 0usize;
    for (i, chunk) in rest.chunks(step).enumerate() {
        d.feed(chunk, i as f64 * 0.01, &mut |t, values| {
            assert!(t.is_finite());
            assert_eq!(values.len(), channels);
            pushed += 1;
        });
    }
    // At most one frame per line.
    assert!(pushed <= rest.iter().filter(|b| **b == b'\n').count());
});
