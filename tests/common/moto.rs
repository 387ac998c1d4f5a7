//! An AWS API emulator for tests: PyPI `moto[server]`, which `scripts/test.sh` installs into
//! `.venv`. Each test that needs AWS starts its own server on a free loopback port, so tests
//! never share emulator state, and the server is killed when the handle drops. The real SDK
//! clients are pointed at it by endpoint URL (`Moto::endpoint`), with dummy credentials.
//!
//! A server can be named instead with `FHIR_UNIFY_MOTO_SERVER` (a `moto_server` executable).

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The region every test client uses against the emulator.
pub const REGION: &str = "us-east-1";

pub struct Moto {
    child: Child,
    pub endpoint: String,
}

fn executable() -> PathBuf {
    if let Some(p) = std::env::var_os("FHIR_UNIFY_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/test.sh, which installs moto[server] there \
         (or set FHIR_UNIFY_MOTO_SERVER to a moto_server executable)",
        p.display()
    );
    p
}

impl Moto {
    /// Starts a fresh emulator and waits until it accepts connections.
    pub fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let child = Command::new(executable())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited before it listened: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// Sets the environment the SDK's default chain reads, so code under test that builds its
    /// clients from the environment (as the Lambdas do) reaches this emulator.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ACCESS_KEY_ID", "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
