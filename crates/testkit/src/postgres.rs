//! A PostgreSQL server of a run's own (chaos, the budget race, tests that stop and restart
//! the database), on a free loopback port with its data in the run's folder, so that
//! killing and restarting it disturbs nothing else on the machine.
//!
//! PostgreSQL refuses to run as root: when this process is root, `initdb` and `pg_ctl` run as
//! the `postgres` user through `runuser` (its data folder is handed to that user); otherwise
//! they run as the current user.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

use crate::ports::{free_port, wait_for_port};

/// A PostgreSQL cluster in `<dir>/pg`, trusting loopback logins of role `postgres`.
pub struct Postgres {
    pub port: u16,
    data: PathBuf,
    bin: PathBuf,
    as_postgres_user: bool,
}

/// True when this process runs as root (PostgreSQL must then run as another user).
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The newest `/usr/lib/postgresql/<version>/bin` (Debian), else the `PATH`.
fn postgres_bin_dir() -> PathBuf {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, d)| d).unwrap_or_default()
}

impl Postgres {
    /// Creates the cluster (`initdb`) and starts it.
    ///
    /// # Errors
    /// When PostgreSQL's programs are missing or the cluster does not start.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let pg = Self {
            port: free_port()?,
            data: dir.join("pg"),
            bin: postgres_bin_dir(),
            as_postgres_user: running_as_root(),
        };
        std::fs::create_dir_all(&pg.data)?;
        if pg.as_postgres_user {
            // The postgres user must reach its folder (the run's folder is 0700 root).
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&pg.data)
                .status()
                .context("cannot run chown")?;
            anyhow::ensure!(
                status.success(),
                "cannot hand {} to the postgres user",
                pg.data.display()
            );
        }
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(&pg.data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .output()
            .context("cannot run initdb (install PostgreSQL: scripts/services.sh does)")?;
        anyhow::ensure!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.pg_ctl_start()?;
        wait_for_port("PostgreSQL", pg.port, Duration::from_secs(30)).await?;
        Ok(pg)
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    fn command(&self, program: &str) -> Command {
        let path = if self.bin.as_os_str().is_empty() {
            PathBuf::from(program)
        } else {
            self.bin.join(program)
        };
        let mut c = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        c.stdin(Stdio::null());
        c
    }

    fn pg_ctl_start(&self) -> anyhow::Result<()> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c max_connections=300 -c fsync=off",
            self.port,
            self.data.display()
        );
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.data.join("server.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .stdout(Stdio::null())
            .output()
            .context("cannot run pg_ctl")?;
        anyhow::ensure!(
            out.status.success(),
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    fn pg_ctl_stop(&self) -> anyhow::Result<()> {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output()
            .context("cannot run pg_ctl")?;
        anyhow::ensure!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Stops the server abruptly (`-m immediate`: every session cut); [`Postgres::resume`]
    /// starts it again. An outage of a chosen length, for tests.
    ///
    /// # Errors
    /// When `pg_ctl` fails.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.pg_ctl_stop()
    }

    /// Starts a stopped server again and waits for it.
    ///
    /// # Errors
    /// When it does not come back.
    pub async fn resume(&self) -> anyhow::Result<()> {
        self.pg_ctl_start()?;
        wait_for_port("PostgreSQL", self.port, Duration::from_secs(30)).await
    }

    /// Stops the server abruptly (`-m immediate`: no checkpoint, crash recovery at the next
    /// start, every session cut) and starts it again.
    ///
    /// # Errors
    /// When it does not come back.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.pg_ctl_stop()?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.pg_ctl_start()?;
        wait_for_port("PostgreSQL", self.port, Duration::from_secs(30)).await
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl_stop();
    }
}
