//! `switchyard audit local-only` and `switchyard security nats-permissions`
//! (docs/security.md).

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use switchyard_proto::teams;
use switchyard_runtime::Settings;

use switchyard_client::exit;

/// `switchyard audit …`.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Did a `local_only` item reach a model outside the local tiers in a period? Exit 0 when
    /// none did, 3 when some did (listed).
    LocalOnly {
        /// Start of the period (RFC 3339, a date, a month or `now`); default: the beginning.
        #[arg(long)]
        from: Option<String>,
        /// End of the period, exclusive; default: now.
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// `switchyard security …`.
#[derive(Debug, clap::Subcommand)]
pub enum SecurityCommand {
    /// Print the nats-server `authorization` block for `[security.nats_users]`: each user may
    /// submit and read results as its team only; passwords are read by nats-server from
    /// `$SY_NATS_PASSWORD_<USER>` environment variables.
    NatsPermissions {
        /// The services' own user (full permissions).
        #[arg(long, default_value = "switchyard")]
        service_user: String,
    },
}

/// Runs an audit command.
///
/// # Errors
/// Unreachable database, unparsable times.
pub async fn audit(settings: Settings, cmd: AuditCommand) -> anyhow::Result<u8> {
    let AuditCommand::LocalOnly { from, to, json } = cmd;
    let parse = |s: Option<String>, default: DateTime<Utc>| -> anyhow::Result<DateTime<Utc>> {
        match s {
            None => Ok(default),
            Some(s) => switchyard_finance::period::parse_instant(&s).map_err(anyhow::Error::msg),
        }
    };
    let from = parse(from, DateTime::<Utc>::UNIX_EPOCH)?;
    let to = parse(to, Utc::now())?;
    let local: Vec<String> = settings
        .tiers
        .iter()
        .filter(|(_, t)| t.local)
        .map(|(n, _)| n.clone())
        .collect();
    let pool = switchyard_store::connect_and_migrate(settings.database_url(), 2).await?;
    let audit = switchyard_store::audit::local_only(&pool, &local, from, to).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&audit)?);
    } else {
        println!(
            "{} booked calls of local_only items between {} and {} (local tiers: {})",
            audit.local_only_calls,
            audit.from.to_rfc3339(),
            audit.to.to_rfc3339(),
            audit.local_tiers.join(", ")
        );
        if audit.clean() {
            println!("none reached a model outside the local tiers");
        }
        for c in &audit.external_calls {
            println!(
                "EXTERNAL: job {} item {} on tier {} model {} ({}) at {} call {}",
                c.job_id,
                c.item_id,
                c.tier,
                c.model,
                c.provider,
                c.created_at.to_rfc3339(),
                c.call_id
            );
        }
    }
    Ok(if audit.clean() {
        exit::OK
    } else {
        exit::PARTIAL
    })
}

/// The environment variable nats-server reads a user's password from.
pub fn password_var(user: &str) -> String {
    let upper: String = user
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("SY_NATS_PASSWORD_{upper}")
}

/// The nats-server `authorization` block for the configured team users (each with its own
/// inbox prefix `_INBOX_<user>`, which its client must set as `[nats.auth] inbox_prefix`) and
/// a service user with every permission.
pub fn nats_authorization(settings: &Settings, service_user: &str) -> String {
    let t = settings.topology();
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let list = |v: &[String]| v.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ");
    let mut out = String::from("authorization {\n  users = [\n");
    let _ = writeln!(
        out,
        "    {{ user: {}, password: ${} }}",
        quote(service_user),
        password_var(service_user)
    );
    for (user, team) in &settings.security.nats_users {
        let (publish, subscribe) = teams::client_permissions(&t, team, &inbox_prefix(user));
        let _ = writeln!(
            out,
            "    {{ user: {}, password: ${}, permissions: {{ publish: {{ allow: [{}] }}, \
             subscribe: {{ allow: [{}] }} }} }}",
            quote(user),
            password_var(user),
            list(&publish),
            list(&subscribe)
        );
    }
    out.push_str("  ]\n}\n");
    out
}

/// The inbox prefix of a team user (its replies, and only its, go there).
pub fn inbox_prefix(user: &str) -> String {
    let safe: String = user
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("_INBOX_{safe}")
}

/// Runs a security command.
///
/// # Errors
/// None so far (the signature leaves room).
pub fn security(settings: &Settings, cmd: SecurityCommand) -> anyhow::Result<u8> {
    let SecurityCommand::NatsPermissions { service_user } = cmd;
    print!("{}", nats_authorization(settings, &service_user));
    Ok(exit::OK)
}
