//! `Authorization: Bearer <key>`: the key's team is the caller. A missing, unknown or revoked
//! key answers 401 in OpenAI's shape before any handler runs.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::Api;
use crate::error::ApiError;

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: String,
    pub team: String,
}

impl FromRequestParts<Api> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "You didn't provide an API key: pass it as `Authorization: Bearer KEY`",
                )
            })?;
        let secret = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::unauthorized("Authorization must be `Bearer KEY`"))?;
        let key = switchyard_store::api::key_by_secret(&api.pool, &crate::keys::hash(secret))
            .await?
            .ok_or_else(|| ApiError::unauthorized("Incorrect API key provided"))?;
        if let Err(not_until) = api.limits.check_key(&key.key_id) {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            api.metrics.api_rate_limited.inc();
            return Err(ApiError::rate_limited(
                api.options.requests_per_minute_per_key.get(),
                wait,
            ));
        }
        Ok(Self {
            key_id: key.key_id,
            team: key.team,
        })
    }
}
