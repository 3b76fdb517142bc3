//! The fleet as real child processes of the chaos run: this very `switchyard` executable with
//! `dispatcher` or `worker --tier …`, each with its own configuration file, killable with
//! SIGKILL at any moment and restartable.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// One role of the fleet (a dispatcher, or a worker serving some tiers).
pub struct Role {
    /// `d0`, `w1`, …; workers also use it as their simulator client tag.
    pub name: String,
    /// What it is, for the log (`dispatcher`, `worker weak`).
    pub describe: String,
    args: Vec<String>,
    config: PathBuf,
    log: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Role {
    /// A role that is not started yet.
    pub fn new(
        name: &str,
        describe: &str,
        args: &[&str],
        config: PathBuf,
        logs: &Path,
        env: Vec<(String, String)>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            describe: describe.to_owned(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            config,
            log: logs.join(format!("{name}.log")),
            env,
            child: None,
        }
    }

    /// Starts the process (its stderr appended to `logs/<name>.log`).
    ///
    /// # Errors
    /// When it cannot be started.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(std::env::current_exe()?)
            .arg("--config")
            .arg(&self.config)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        Ok(())
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

    /// The exit status if the process ended by itself since it was started.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    /// SIGTERM, then waits at most `within` for the process to exit; SIGKILL after that.
    /// Returns the exit code (`None`: killed or signalled).
    pub async fn terminate(&mut self, within: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if started.elapsed() > within {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.kill9();
    }
}
