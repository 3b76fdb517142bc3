//! API keys: `sy-` and 64 hex digits of randomness, shown once at creation. Postgres keeps
//! only their SHA-256, so a copy of the table cannot authenticate.

use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use sqlx::PgPool;
use switchyard_store::api::{self, KeyRow};

/// What every key starts with (so a leaked key is recognisable in logs and scanners).
pub const PREFIX: &str = "sy-";

/// The hash a key is stored and looked up by.
pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Creates a key for `team`; returns its row and its secret (not kept anywhere).
///
/// # Errors
/// A team name that is empty, or database errors.
pub async fn create(
    pool: &PgPool,
    team: &str,
    name: Option<&str>,
) -> anyhow::Result<(KeyRow, String)> {
    if team.trim().is_empty() {
        anyhow::bail!("--team must name a team");
    }
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let secret = format!("{PREFIX}{}", hex::encode(raw));
    let key_id = format!("key_{}", ulid::Ulid::new());
    let row = api::insert_key(pool, &key_id, team, name, &hash(&secret)).await?;
    Ok((row, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_and_distinct() {
        assert_eq!(hash("sy-a"), hash("sy-a"));
        assert_ne!(hash("sy-a"), hash("sy-b"));
    }
}
