//! Credentials in connection URLs, read and hidden through `url::Url`.
//!
//! One rule for every URL Switchyard prints (NATS and Postgres alike): the whole userinfo
//! becomes `[redacted]`. Hiding only the password is not enough, because a NATS token sits
//! where a user name goes (`nats://token@host`).

use percent_encoding::percent_decode_str;
use secrecy::SecretString;
use url::Url;

/// What replaces credentials.
const REDACTED: &str = "[redacted]";

/// `url` without its credentials, as `scheme://[redacted]@host…` when it had some. A string
/// that is not a URL but has an `@` is hidden whole: it may be a mistyped URL with a password.
pub fn redact_url(url: &str) -> String {
    match Url::parse(url.trim()) {
        Ok(parsed) => match without_credentials(&parsed) {
            Some(bare) => {
                let scheme = bare.scheme();
                let rest = bare.as_str()[scheme.len()..]
                    .strip_prefix("://")
                    .unwrap_or_default();
                format!("{scheme}://{REDACTED}@{rest}")
            }
            None => parsed.to_string(),
        },
        Err(_) if url.contains('@') => REDACTED.to_owned(),
        Err(_) => url.trim().to_owned(),
    }
}

/// `url` with its user and password removed; `None` when it had neither.
fn without_credentials(url: &Url) -> Option<Url> {
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let mut bare = url.clone();
    // Both fail only for URLs without a host, which cannot carry credentials either.
    let _ = bare.set_password(None);
    let _ = bare.set_username("");
    Some(bare)
}

/// Replaces the credentials of NATS URLs (`nats://user:password@host`, or a token
/// `nats://token@host`) with `[redacted]`, for messages and `--check-config`. Several
/// comma-separated URLs are each redacted.
pub fn redact_nats_url(url: &str) -> String {
    url.split(',').map(redact_url).collect::<Vec<_>>().join(",")
}

/// Splits the credentials off NATS URLs: the URLs without them, and `(user, password)` or
/// `(token, None)` from the first URL that has some (percent-decoded, as URL userinfo is).
/// Entries that are not URLs (`host:4222`) are kept as they are.
pub fn split_url_credentials(url: &str) -> (String, Option<(String, Option<SecretString>)>) {
    let mut found = None;
    let bare = url
        .split(',')
        .map(|u| {
            let u = u.trim();
            let Ok(parsed) = Url::parse(u) else {
                return u.to_owned();
            };
            match without_credentials(&parsed) {
                Some(bare) => {
                    if found.is_none() {
                        found = Some((
                            decode(parsed.username()),
                            parsed.password().map(|p| SecretString::from(decode(p))),
                        ));
                    }
                    bare.to_string()
                }
                None => u.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    (bare, found)
}

fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret as _;

    use super::*;

    #[test]
    fn every_url_loses_its_whole_userinfo() {
        assert_eq!(
            redact_nats_url("nats://u:hunter2@h:4222,tls://tok3n@k:1"),
            "nats://[redacted]@h:4222,tls://[redacted]@k:1"
        );
        assert_eq!(redact_nats_url("nats://h:4222"), "nats://h:4222");
        assert_eq!(
            redact_url("postgres://u:p%40ss@db:5432/x?sslmode=require"),
            "postgres://[redacted]@db:5432/x?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/switchyard"),
            "postgres://[redacted]@127.0.0.1:5432/switchyard"
        );
        assert_eq!(redact_url("not a url with @ in it"), "[redacted]");
        assert_eq!(redact_url("127.0.0.1:4222"), "127.0.0.1:4222");
    }

    #[test]
    fn credentials_leave_the_url() {
        let (bare, creds) = split_url_credentials("nats://u:p%40ss@h:1, nats://k:2");
        assert_eq!(bare, "nats://h:1,nats://k:2");
        let (user, password) = creds.unwrap();
        assert_eq!(
            (user.as_str(), password.unwrap().expose_secret()),
            ("u", "p@ss")
        );
        let (_, creds) = split_url_credentials("tls://tok@h:1");
        assert!(matches!(creds, Some((t, None)) if t == "tok"));
        let (bare, creds) = split_url_credentials("127.0.0.1:4222");
        assert_eq!((bare.as_str(), creds.is_none()), ("127.0.0.1:4222", true));
    }
}
