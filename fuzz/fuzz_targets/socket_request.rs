//! One request line of the status socket (contract §5, §12), and the error
//! reply built from whatever it was.
#![no_main]
use libfuzzer_sys::fuzz_target;
use neuroedge::control::protocol::{error_reply, parse};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(_) => {}
        Err(e) => {
            let reply = error_reply(&e.message, &e.hint);
            // The reply is always valid JSON on one line.
            let text = serde_json::to_string(&reply).expect("serializable");
            assert!(!text.contains('\n'));
        }
    }
});
