//! Batch envelopes as read from a journal or a bucket: the CBOR envelope,
//! its header, authentication, and the plaintext decoder (fed directly,
//! since the fuzzer cannot forge AES-GCM tags).
#![no_main]
use libfuzzer_sys::fuzz_target;
use neuroedge::batch::{decode_plaintext, open, read_header, BatchHeader};
use neuroedge::crypto::{BatchKey, Keyring};

fn header(format: &str, n_samples: u64, n_channels: u32) -> BatchHeader {
    BatchHeader {
        format: format.into(),
        batch_id: "b".into(),
        site_id: "s".into(),
        node_id: "n".into(),
        device_id: "d".into(),
        seq: 0,
        first_sample: 0,
        n_samples,
        n_channels,
        sample_rate: 250.0,
        t_start: 0.0,
        t_end: 1.0,
        key_id: "k".into(),
        cipher: "aes-256-gcm".into(),
        compression: "none".into(),
        created_at: 0.0,
    }
}

fuzz_target!(|data: &[u8]| {
    // [0xFF or 0xFE, n_samples, n_channels, plaintext...]: the plaintext
    // decoder of batch format v2 or v1; anything else: an envelope.
    if let [tag @ (0xFF | 0xFE), ns, nc, plain @ ..] = data {
        let format = if *tag == 0xFF {
            neuroedge::batch::FORMAT_V2
        } else {
            neuroedge::batch::FORMAT_V1
        };
        let h = header(format, u64::from(*ns), u32::from(*nc));
        // Shapes are checked by the journal reader after decoding; here:
        // no panic, no unbounded allocation.
        let _ = decode_plaintext(plain, &h);
        return;
    }
    let keys = Keyring::new(BatchKey::from_bytes(&[7; 32]));
    let _ = read_header(data);
    let _ = open(&keys, data);
});
