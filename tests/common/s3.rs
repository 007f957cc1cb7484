//! A real S3 server for the object-storage tests: s3s-fs (installed by
//! `.ci/run`), serving a temp directory on a loopback port, with SigV4
//! credentials hexmirror reads from a 0600 file.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::require_tool;

const ACCESS_KEY: &str = "hexmirrortestaccess";
const SECRET_KEY: &str = "hexmirrortestsecretkey";

/// A running s3s-fs with one bucket, killed when dropped.
pub struct S3Server {
    child: Option<Child>,
    root: TempDir,
    port: u16,
    /// The bucket's name.
    pub bucket: String,
    auth: bool,
}

impl S3Server {
    /// Starts s3s-fs with bucket `bucket`, checking SigV4 signatures.
    pub fn start(bucket: &str) -> Self {
        Self::start_with(bucket, true)
    }

    /// Starts s3s-fs without credentials (it then checks no signature), for
    /// the header-stripping proxy, whose edits would break a signature.
    pub fn start_without_auth(bucket: &str) -> Self {
        Self::start_with(bucket, false)
    }

    fn start_with(bucket: &str, auth: bool) -> Self {
        require_tool("s3s-fs");
        let root = TempDir::new().expect("s3 root");
        fs::create_dir(root.path().join(bucket)).expect("bucket directory");
        let port = free_port();
        let mut server = Self {
            child: None,
            root,
            port,
            bucket: bucket.to_owned(),
            auth,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("s3s-fs");
        cmd.args(["--host", "127.0.0.1", "--port", &self.port.to_string()]);
        if self.auth {
            cmd.args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY]);
        }
        cmd.arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(cmd.spawn().expect("start s3s-fs"));
        wait_for_port(self.port);
    }

    /// Stops the server (the bucket is down), keeping its files.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and files.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where the object `key` (relative to the bucket) lives on disk.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.path().join(&self.bucket).join(key)
    }

    /// A `[storage]` table for this bucket (`role`, plus `extra` lines),
    /// with a credentials file written into `dir`.
    pub fn storage_section(&self, dir: &Path, role: &str, extra: &str) -> String {
        self.storage_section_at(dir, role, &self.endpoint(), extra)
    }

    /// Like [`Self::storage_section`], through `endpoint` (a proxy).
    pub fn storage_section_at(
        &self,
        dir: &Path,
        role: &str,
        endpoint: &str,
        extra: &str,
    ) -> String {
        use std::os::unix::fs::PermissionsExt;
        let creds = dir.join("s3.env");
        fs::write(
            &creds,
            format!("AWS_ACCESS_KEY_ID={ACCESS_KEY}\nAWS_SECRET_ACCESS_KEY={SECRET_KEY}\n"),
        )
        .unwrap();
        fs::set_permissions(&creds, fs::Permissions::from_mode(0o600)).unwrap();
        format!(
            "\n[storage]\nkind = \"s3\"\nrole = \"{role}\"\nbucket = \"{}\"\nprefix = \"tree\"\n\
             endpoint = \"{endpoint}\"\nregion = \"us-east-1\"\ncredentials_file = \"{}\"\n{extra}\n",
            self.bucket,
            creds.display()
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port free on loopback now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "s3s-fs did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
