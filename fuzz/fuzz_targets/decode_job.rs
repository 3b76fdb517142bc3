//! Any bytes on `<prefix>.jobs.submit`: decoding a job spec (and its envelope) never panics,
//! and whatever decodes survives an encode/decode round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_proto::{JobSpec, codec};

fuzz_target!(|data: &[u8]| {
    let _ = codec::decode_envelope(data);
    if let Ok(spec) = codec::decode::<JobSpec>(data) {
        // Validation must not panic on anything that decodes either.
        let _ = switchyard_core::validate::check_spec(&spec, &Default::default());
        if let Some(items) = &spec.items {
            for (i, item) in items.iter().enumerate() {
                let _ = switchyard_core::validate::check_item(item, i as u64, &Default::default());
            }
        }
        let bytes = codec::encode(&spec).expect("a decoded spec encodes");
        let again: JobSpec = codec::decode(&bytes).expect("an encoded spec decodes");
        // NaN thresholds compare unequal to themselves: compare the encodings instead.
        assert_eq!(codec::encode(&again).expect("encodes"), bytes);
    }
});
