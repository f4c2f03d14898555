//! A moto server (the AWS emulator) of a test's own: started on a free port from the project's `.venv`,
//! seeded with a certificate, a hosted zone and the default VPC's subnets, killed when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// moto imports every service's models at start: a few seconds on a busy machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A tool from the project's `.venv` (test.sh makes it), or from the PATH.
pub fn venv_bin(name: &str) -> PathBuf {
    let p = workspace_root().join(".venv/bin").join(name);
    if p.exists() { p } else { PathBuf::from(name) }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

#[derive(Debug, Clone, Deserialize)]
pub struct Seeded {
    pub vpc_id: String,
    pub subnet_ids: Vec<String>,
    pub zones: std::collections::BTreeMap<String, SeededZone>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SeededZone {
    pub certificate_arn: String,
    pub hosted_zone_id: String,
}

#[derive(Debug)]
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    pub async fn start() -> Self {
        let port = free_port();
        let bin = venv_bin("moto_server");
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({e}): ./test.sh installs moto into .venv", bin.display()));
        let moto = Self { child, endpoint: format!("http://127.0.0.1:{port}") };
        let started = Instant::now();
        let client = reqwest::Client::new();
        loop {
            if client.get(format!("{}/moto-api/", moto.endpoint)).send().await.is_ok() {
                return moto;
            }
            assert!(started.elapsed() < START_TIMEOUT, "moto did not start within {START_TIMEOUT:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates a certificate and a hosted zone per DNS zone, through the moto seeder script.
    pub async fn seed(&self, zones: &[&str]) -> Seeded {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("moto_seed.py");
        let out = tokio::process::Command::new(venv_bin("python"))
            .arg(script)
            .arg(&self.endpoint)
            .args(zones)
            .output()
            .await
            .expect("python from .venv");
        assert!(out.status.success(), "moto_seed.py failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("seed JSON")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
