//! The finance role: a Postgres login that reads the `reporting` views (costs, prices,
//! budgets, jobs without their tasks) and nothing else. The views run with their owner's
//! rights, so the role needs and gets no right on any table: it cannot read `items` (prompts)
//! or `results` (answers), and it cannot write anything (its sessions are read-only too).
//!
//! Roles are cluster-wide in Postgres: one role can be granted on several databases.

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;

/// Why the role was not set up.
#[derive(Debug, thiserror::Error)]
pub enum FinanceRoleError {
    #[error(
        "`{0}` is not a usable role name: use 1-63 characters of a-z, 0-9 and _, starting with a letter or _"
    )]
    BadName(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Creates `role` if missing (a login, with `password` when given), and grants it read
/// access to the reporting views of the current database, nothing more. Idempotent.
///
/// # Errors
/// A bad name, or a database error (the connecting user needs CREATEROLE).
pub async fn grant(
    pool: &PgPool,
    role: &str,
    password: Option<&SecretString>,
) -> Result<(), FinanceRoleError> {
    if !valid_name(role) {
        return Err(FinanceRoleError::BadName(role.to_owned()));
    }
    let mut tx = pool.begin().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(role)
            .fetch_one(&mut *tx)
            .await?;
    if !exists {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE \"{role}\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT"
        )))
        .execute(&mut *tx)
        .await?;
    }
    if let Some(pw) = password {
        // The statement is built by Postgres itself (`format` with %L), so the password is
        // quoted correctly and never appears in our SQL text.
        let stmt: String = sqlx::query_scalar("SELECT format('ALTER ROLE %I PASSWORD %L', $1, $2)")
            .bind(role)
            .bind(pw.expose_secret())
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(stmt))
            .execute(&mut *tx)
            .await?;
    }
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut *tx)
        .await?;
    let db = db.replace('"', "\"\"");
    for stmt in [
        format!("ALTER ROLE \"{role}\" SET default_transaction_read_only = on"),
        format!("GRANT CONNECT ON DATABASE \"{db}\" TO \"{role}\""),
        format!("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM \"{role}\""),
        format!("GRANT USAGE ON SCHEMA reporting TO \"{role}\""),
        format!("GRANT SELECT ON ALL TABLES IN SCHEMA reporting TO \"{role}\""),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(stmt))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Removes everything `role` was granted in the current database (before dropping the role).
///
/// # Errors
/// A bad name, or a database error.
pub async fn revoke(pool: &PgPool, role: &str) -> Result<(), FinanceRoleError> {
    if !valid_name(role) {
        return Err(FinanceRoleError::BadName(role.to_owned()));
    }
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await?;
    let db = db.replace('"', "\"\"");
    for stmt in [
        format!("REVOKE ALL ON ALL TABLES IN SCHEMA reporting FROM \"{role}\""),
        format!("REVOKE USAGE ON SCHEMA reporting FROM \"{role}\""),
        format!("REVOKE CONNECT ON DATABASE \"{db}\" FROM \"{role}\""),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(stmt)).execute(pool).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_identifiers() {
        assert!(valid_name("finance_ro"));
        assert!(valid_name("_x1"));
        for bad in [
            "",
            "Finance",
            "a-b",
            "a b",
            "1a",
            "x\"; DROP",
            &"a".repeat(64),
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
