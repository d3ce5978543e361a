//! A real Apache Kafka Connect worker (distributed mode, scripts/connect-worker), for the
//! tests that hold kafka-direct's REST API against Connect's own.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::{free_port, repo_root, watchdog};

/// A Connect worker storing its state in the Kafka cluster at `bootstrap`; killed on drop.
pub struct ConnectWorker {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ConnectWorker {
    /// Starts a worker and waits until its herder serves (at most 120 s).
    pub fn start(bootstrap: &str) -> Self {
        watchdog();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = dir.path().join("worker.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(repo_root().join("scripts/connect-worker"))
            .args(["--bootstrap", bootstrap, "--port", &port.to_string()])
            .arg("--dir")
            .arg(dir.path().join("worker"))
            .args(["--watch", &std::process::id().to_string()])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("scripts/connect-worker starts");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Herder started") {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("scripts/connect-worker exited ({status}) before serving; its log:\n{text}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the Connect worker did not start within 120 s; its log:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        Self {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:PORT`, its REST API.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The worker's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ConnectWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
