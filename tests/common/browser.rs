//! A real browser for the UI tests: Debian's headless Chromium driven over
//! WebDriver (`chromedriver`) with fantoccini. Both are required tools:
//! `.ci/run` installs them, and a missing one fails the test.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};

use super::require_tool;

/// A running chromedriver, killed when dropped.
pub struct Driver {
    child: Child,
    url: String,
    /// The browser profiles, deleted with the driver.
    profiles: std::sync::Mutex<Vec<tempfile::TempDir>>,
}

impl Driver {
    /// Starts chromedriver on a free loopback port and waits until it answers.
    pub fn start() -> Self {
        let driver = require_tool("chromedriver");
        require_tool("chromium");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("find a free port")
            .port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {url} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            url,
            profiles: Default::default(),
        }
    }

    /// A new headless Chromium session with a fresh profile.
    pub async fn session(&self) -> Client {
        let profile = tempfile::TempDir::new().expect("browser profile dir");
        // The flags keep Chromium off the network (this machine has none
        // beyond loopback) and runnable as root in a container.
        let args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--window-size=1280,900".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        self.profiles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(profile);
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({"binary": "/usr/bin/chromium", "args": args}),
        );
        ClientBuilder::rustls()
            .expect("TLS roots for the WebDriver client")
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("WebDriver session on {}: {e}", self.url))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
