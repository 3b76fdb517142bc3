//! Which weak-routed items are also sent to the strong model as shadow calls.
//!
//! Why a hash, not a random draw: the choice must survive a redelivered job message or a
//! restarted dispatch (the same items, the same shadow calls, deduplicated by their attempt
//! keys), and be explainable afterwards. `sha256("shadow", job, item)` is uniform enough that
//! a fraction `f` of a job's items is chosen, and unrelated to the router's score.

use sha2::{Digest, Sha256};

/// True when the item is one of the `fraction` of its job chosen for a shadow call.
pub fn sampled(job_id: &str, item_id: &str, fraction: f64) -> bool {
    if fraction.is_nan() || fraction <= 0.0 {
        return false;
    }
    if fraction >= 1.0 {
        return true;
    }
    let mut h = Sha256::new();
    h.update(b"shadow\0");
    h.update((job_id.len() as u64).to_le_bytes());
    h.update(job_id.as_bytes());
    h.update(item_id.as_bytes());
    let d = h.finalize();
    let x = u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    // The top 53 bits as a uniform draw in [0, 1).
    ((x >> 11) as f64 / (1u64 << 53) as f64) < fraction
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn about_the_fraction_is_chosen_and_the_choice_is_stable() {
        let chosen = (0..10_000)
            .filter(|i| sampled("job-1", &format!("item-{i}"), 0.1))
            .count();
        assert!((900..1100).contains(&chosen), "{chosen}");
        assert_eq!(sampled("j", "i", 0.3), sampled("j", "i", 0.3));
        assert!(!sampled("j", "i", 0.0) && sampled("j", "i", 1.0));
        // Nested: what is chosen at 10% is chosen at 20%.
        assert!(
            (0..1000)
                .map(|i| format!("{i}"))
                .all(|i| !sampled("j", &i, 0.1) || sampled("j", &i, 0.2))
        );
    }
}
