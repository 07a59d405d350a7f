//! Runs the `vbus` binary the way a user does (ripgrep's `TestCommand`).

use std::path::Path;
use std::process::{Command, Output};

/// A `vbus` command with a clean environment (no `VBUS_HOME`, no `VBUS_LOG`).
pub fn vbus(home: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vbus"));
    command
        .env_remove("VBUS_HOME")
        .env_remove("VBUS_LOG")
        .arg("--home")
        .arg(home);
    command
}

/// A finished run, with its output as text.
#[derive(Debug)]
pub struct Run {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(command: &mut Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("vbus runs");
    Run {
        success: status.success(),
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Runs `vbus --home HOME ARGS..` and insists that it succeeds.
pub fn run_ok(home: &Path, args: &[&str]) -> Run {
    let result = run(vbus(home).args(args));
    assert!(result.success, "vbus {args:?} failed: {result:#?}");
    result
}

/// A plain HTTP/1.1 GET over loopback; returns the status code and the body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).expect("daemon accepts connections");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("daemon answers");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status code");
    (status, body.to_owned())
}
