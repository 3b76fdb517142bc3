//! Any bytes on `<prefix>.work.<tier>`: decoding a work item never panics, and whatever
//! decodes survives an encode/decode round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_proto::{WorkItem, codec};

fuzz_target!(|data: &[u8]| {
    if let Ok(item) = codec::decode::<WorkItem>(data) {
        let _ = item.attempt_key();
        let bytes = codec::encode(&item).expect("a decoded item encodes");
        let again: WorkItem = codec::decode(&bytes).expect("an encoded item decodes");
        assert_eq!(codec::encode(&again).expect("encodes"), bytes);
    }
});
