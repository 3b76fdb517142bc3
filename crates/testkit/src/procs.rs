//! One handle for a role of the fleet run as a child process (`switchyard --config CONFIG
//! dispatcher`, `… worker --tier T`): started, killed with SIGKILL as a crash would, stopped
//! with SIGTERM as a deployment does, restarted, and read from `/proc` by pid. Chaos and the
//! benches use it; by default the program is this very executable (they run inside
//! `switchyard`), [`Role::with_program`] names another (a test's `CARGO_BIN_EXE_switchyard`).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use anyhow::Context as _;

/// One role of the fleet (a dispatcher, or a worker serving some tiers).
pub struct Role {
    /// `d0`, `w1`, …; chaos's workers also use it as their simulator client tag.
    pub name: String,
    /// What it is, for logs (`dispatcher`, `worker weak`).
    pub describe: String,
    program: Option<PathBuf>,
    args: Vec<String>,
    config: Option<PathBuf>,
    log: Option<PathBuf>,
    env: Vec<(String, String)>,
    env_removed: Vec<String>,
    child: Option<Child>,
}

impl Role {
    /// A role that is not started yet. Its stderr is appended to `<logs>/<name>.log` when
    /// `logs` is given, dropped otherwise.
    pub fn new(
        name: &str,
        describe: &str,
        args: &[&str],
        config: PathBuf,
        logs: Option<&Path>,
        env: Vec<(String, String)>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            describe: describe.to_owned(),
            program: None,
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            config: Some(config),
            log: logs.map(|d| d.join(format!("{name}.log"))),
            env,
            env_removed: Vec::new(),
            child: None,
        }
    }

    /// Runs `program` instead of this executable.
    #[must_use]
    pub fn with_program(mut self, program: PathBuf) -> Self {
        self.program = Some(program);
        self
    }

    /// Runs without `--config` (the program's defaults and environment).
    #[must_use]
    pub fn without_config(mut self) -> Self {
        self.config = None;
        self
    }

    /// Removes `names` from the environment the process inherits (e.g. a developer's
    /// `DATABASE_URL`, so that the config file says where the services are); the role's own
    /// `env` is still set.
    #[must_use]
    pub fn without_env(mut self, names: &[&str]) -> Self {
        self.env_removed
            .extend(names.iter().map(|n| (*n).to_owned()));
        self
    }

    /// The command line: `PROGRAM [--config CONFIG] ARGS…` in the role's environment, stdin
    /// closed.
    ///
    /// # Errors
    /// When this executable cannot be found.
    pub fn command(&self) -> anyhow::Result<Command> {
        let program = match &self.program {
            Some(p) => p.clone(),
            None => std::env::current_exe().context("cannot find this executable")?,
        };
        let mut cmd = Command::new(program);
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        for name in &self.env_removed {
            cmd.env_remove(name);
        }
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null());
        Ok(cmd)
    }

    /// Runs the command once to its end, capturing stdout and stderr: a one-shot command
    /// (`status`, `submit --wait`) rather than a service.
    ///
    /// # Errors
    /// When it cannot be started.
    pub fn output(&self) -> anyhow::Result<Output> {
        self.command()?
            .output()
            .with_context(|| format!("cannot run {}", self.name))
    }

    /// Runs the command to its end as [`Role::output`] does, but gives up after `limit`
    /// (killing it): `None` when it was still running, as a service that started would be.
    ///
    /// # Errors
    /// When it cannot be started.
    pub fn output_within(&self, limit: Duration) -> anyhow::Result<Option<Output>> {
        let mut child = self
            .command()?
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", self.name))?;
        let every = Duration::from_millis(50);
        let ended = crate::poll_blocking(limit, every, || child.try_wait().ok().flatten());
        if ended.is_none() {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        Ok(Some(child.wait_with_output()?))
    }

    /// Starts the process.
    ///
    /// # Errors
    /// When it cannot be started (or its log cannot be opened).
    pub fn start(&mut self) -> anyhow::Result<()> {
        let stderr = match &self.log {
            Some(path) => Stdio::from(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| {
                        format!("cannot open {}'s log {}", self.name, path.display())
                    })?,
            ),
            None => Stdio::null(),
        };
        let mut cmd = self.command()?;
        let child = cmd
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| {
                let program = Path::new(cmd.get_program()).display().to_string();
                format!("cannot start {} ({program})", self.name)
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// The process id while it runs (as far as we know).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process runs (as far as we know).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL: the process dies at once, whatever it was doing.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM without waiting: the process drains and exits on its own (reaped on drop).
    pub fn sigterm(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }

    /// The exit status if the process ended by itself since it was started.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    /// SIGTERM, then waits at most `within` for the process to exit; SIGKILL after that.
    /// Returns the exit code (`None`: killed or signalled).
    pub async fn terminate(&mut self, within: Duration) -> Option<i32> {
        self.sigterm();
        let mut child = self.child.take()?;
        let exited = crate::poll(
            "an exit after SIGTERM",
            within,
            Duration::from_millis(20),
            || {
                let status = child.try_wait();
                async move {
                    match status {
                        Ok(Some(status)) => Ok(status),
                        Ok(None) => Err("still running".to_owned()),
                        Err(e) => Err(e.to_string()),
                    }
                }
            },
        )
        .await;
        match exited {
            Ok(status) => status.code(),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                None
            }
        }
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.kill9();
    }
}
