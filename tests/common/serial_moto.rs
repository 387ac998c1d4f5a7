//! A moto server that answers one request at a time, for tests of the DynamoDB store.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

/// moto's server answers requests on several threads, and its `TransactWriteItems` rolls a
/// failed transaction back by restoring a snapshot of the whole table taken when it began, which
/// undoes any transaction another thread committed meanwhile: concurrent writers would then lose
/// updates that DynamoDB keeps. DynamoDB's transactions are atomic, so the suite runs moto's
/// application on one thread (requests one at a time, as atomic as DynamoDB's); the writers
/// still race in the store, between their reads and their conditional writes.
pub struct SerialMoto {
    child: std::process::Child,
    pub endpoint: String,
}

const SERIAL_MOTO: &str = "
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app, MotoRequestHandler
run_simple('127.0.0.1', int(sys.argv[1]), DomainDispatcherApplication(create_backend_app),
           threaded=False, request_handler=MotoRequestHandler)
";

impl SerialMoto {
    pub fn start() -> SerialMoto {
        use std::time::{Duration, Instant};
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python3");
        assert!(
            python.is_file(),
            "{} is missing: run scripts/test.sh",
            python.display()
        );
        let mut child = std::process::Command::new(python)
            .args(["-c", SERIAL_MOTO, &port.to_string()])
            .env("MOTO_PORT", port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("moto exited before it listened: {status}");
            }
            assert!(Instant::now() < deadline, "moto did not listen within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        SerialMoto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for SerialMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
