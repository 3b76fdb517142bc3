//! Helpers of the finance scenarios: the testkit's ledger helpers (jobs and calls booked
//! straight through the store), an HTTP GET, and a Chromium finder.

pub use switchyard_testkit::ledger::{answered, book, count, d, seed_job};

/// `GET path` on a local server: (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    switchyard_testkit::http::get(&format!("http://{addr}{path}")).await
}

/// The headless browser: `SWITCHYARD_CHROMIUM`, or Debian's `chromium` (scripts/test.sh
/// installs it when missing).
pub fn chromium() -> String {
    if let Ok(p) = std::env::var("SWITCHYARD_CHROMIUM") {
        return p;
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {name}"))
            .output()
            && out.status.success()
        {
            return String::from_utf8_lossy(&out.stdout).trim().to_owned();
        }
    }
    panic!(
        "no headless Chromium found: run ./scripts/test.sh (it installs Debian's `chromium`) \
         or set SWITCHYARD_CHROMIUM"
    );
}

/// Every bundled MMLU item (see `support::mmlu_items`).
pub fn all_mmlu_items() -> Vec<switchyard_proto::Item> {
    let n = crate::support::data()
        .records()
        .filter(|r| r.choices.is_some())
        .count();
    crate::support::mmlu_items(n)
}
