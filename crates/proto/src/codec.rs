//! The only place that calls `rmp-serde`.
//!
//! Structs are encoded as maps with named keys (`to_vec_named`), never positional arrays, so
//! processes at different versions can talk and non-Rust clients can build messages by hand.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::MAX_VERSION;

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    /// The bytes are not MessagePack, or not the shape the message type needs.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message has no `v` field (or it is not an integer).
    #[error("message has no version field `v`")]
    MissingVersion,
    /// The message was written by a newer protocol than this build knows.
    #[error("unsupported message version {found} (this build understands up to {max})")]
    UnsupportedVersion { found: u64, max: u16 },
}

/// How deeply a message may nest (maps and arrays, metadata included). Decoding recurses per
/// level: without a bound, a few kilobytes of `[[[[…]]]]` overflow a thread's stack and crash
/// every process that reads the message (a poison message no retry policy can catch).
pub const MAX_DEPTH: usize = 64;

/// `rmp_serde::from_slice` with the nesting bounded by [`MAX_DEPTH`].
fn from_slice_bounded<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_DEPTH);
    T::deserialize(&mut de)
}

/// Encodes a message as MessagePack with named fields.
///
/// # Errors
/// Fails only if a value cannot be represented in MessagePack (e.g. a map with non-string
/// keys inside `serde_json::Value`), which the message types here never produce.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(value)
}

/// Just the version and identity of a message, read before the full decode so that a
/// message that fails the full decode can still be attributed to its job.
#[derive(Debug, Default, Deserialize)]
pub struct Envelope {
    /// Protocol version.
    pub v: Option<u64>,
    /// Job id, when the message has one.
    pub job_id: Option<String>,
}

/// Reads the envelope of any message without validating the rest.
///
/// # Errors
/// [`DecodeError::Malformed`] when the bytes are not a MessagePack map.
pub fn decode_envelope(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    from_slice_bounded::<Envelope>(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Decodes a versioned message, checking the version first.
///
/// # Errors
/// [`DecodeError::MissingVersion`], [`DecodeError::UnsupportedVersion`], or
/// [`DecodeError::Malformed`] with the decoder's description of what was wrong.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let envelope = decode_envelope(bytes)?;
    match envelope.v {
        None => return Err(DecodeError::MissingVersion),
        Some(found) if found > u64::from(MAX_VERSION) => {
            return Err(DecodeError::UnsupportedVersion {
                found,
                max: MAX_VERSION,
            });
        }
        Some(_) => {}
    }
    from_slice_bounded(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Item, JobSpec, Task};

    #[test]
    fn newer_version_is_rejected_with_both_numbers() {
        let mut spec = JobSpec::new("j1", Task::Generate { instructions: None });
        spec.v = 9;
        let bytes = encode(&spec).unwrap();
        assert_eq!(
            decode::<JobSpec>(&bytes),
            Err(DecodeError::UnsupportedVersion {
                found: 9,
                max: MAX_VERSION
            })
        );
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        assert!(matches!(
            decode::<JobSpec>(b"{\"json\": true}"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode::<JobSpec>(&[]),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn missing_field_names_the_field() {
        #[derive(serde::Serialize)]
        struct NoTask {
            v: u16,
            job_id: &'static str,
        }
        let bytes = encode(&NoTask { v: 1, job_id: "j" }).unwrap();
        let err = decode::<JobSpec>(&bytes).unwrap_err().to_string();
        assert!(err.contains("task"), "{err}");
        // The envelope still names the job, so the rejection can be stored on it.
        assert_eq!(
            decode_envelope(&bytes).unwrap().job_id.as_deref(),
            Some("j")
        );
    }

    #[test]
    fn deep_nesting_is_refused_without_recursing_into_it() {
        // 100,000 nested arrays in an item's metadata: refused, and the stack survives even
        // on a small thread.
        let mut spec = JobSpec::new("deep", Task::Generate { instructions: None });
        let mut item = Item::new("1", "x");
        item.metadata.insert("m".into(), serde_json::Value::Null);
        spec.items = Some(vec![item]);
        let bytes = encode(&spec).unwrap();
        let at = bytes.iter().rposition(|b| *b == 0xc0).unwrap();
        let mut deep = bytes[..at].to_vec();
        deep.extend(std::iter::repeat_n(0x91u8, 100_000));
        deep.push(0xc0);
        deep.extend_from_slice(&bytes[at + 1..]);
        let err = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || decode::<JobSpec>(&deep))
            .unwrap()
            .join()
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("depth limit exceeded"), "{err}");
    }

    #[test]
    fn roundtrip_keeps_everything() {
        let mut spec = JobSpec::new(
            "j2",
            Task::Classify {
                labels: vec!["A".into(), "B".into()],
                instructions: None,
            },
        );
        spec.items = Some(vec![Item::new("i1", "hello")]);
        let back: JobSpec = decode(&encode(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
    }
}
