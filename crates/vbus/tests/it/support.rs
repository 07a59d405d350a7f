//! Runs the `vbus` binary the way a user does (ripgrep's `TestCommand`).

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
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
    let response = get_raw(addr, path).expect("daemon answers");
    let response = String::from_utf8(response).expect("a UTF-8 response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status code");
    (status, body.to_owned())
}

/// A GET over loopback; the status and the body's bytes. A body shorter than its
/// `Content-Length` (the server broke the transfer off) gives the status 599.
pub fn http_get_bytes(addr: &str, path: &str) -> (u16, Vec<u8>) {
    let mut response = Vec::new();
    // A transfer broken off mid-body ends the read with an error: what came is kept.
    let _ = get_raw_into(addr, path, &mut response);
    let head_end = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("an HTTP response")
        + 4;
    let head = String::from_utf8_lossy(&response[..head_end]).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status code");
    let body = response[head_end..].to_vec();
    if let Some(len) = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|len| len.trim().parse::<usize>().ok())
    {
        assert!(body.len() <= len, "more bytes than announced");
        if body.len() < len {
            return (599, body);
        }
    }
    (status, body)
}

fn get_raw(addr: &str, path: &str) -> std::io::Result<Vec<u8>> {
    let mut response = Vec::new();
    get_raw_into(addr, path, &mut response)?;
    Ok(response)
}

/// Sends `GET path` with `Connection: close` and reads the whole response into `response`.
fn get_raw_into(addr: &str, path: &str, response: &mut Vec<u8>) -> std::io::Result<()> {
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
    stream.read_to_end(response).map(|_| ())
}

/// A daemon started by a test; killed if the test ends without stopping it.
pub struct Daemon {
    pub child: Child,
    pub addr: String,
    stderr_lines: mpsc::Receiver<String>,
}

impl Daemon {
    pub fn start(home: &Path) -> Self {
        Self::start_with(home, &["up", "--listen", "127.0.0.1:0"])
    }

    /// `vbus --home HOME ARGS..`, a server that logs `listening on http://ADDR`.
    pub fn start_with(home: &Path, args: &[&str]) -> Self {
        Self::spawn(vbus(home).args(args))
    }

    /// A `vbus` server command (one that logs `listening on http://ADDR`), started.
    pub fn spawn(command: &mut Command) -> Self {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (sender, stderr_lines) = mpsc::sync_channel(1024);
        // From here on, `Drop` kills and reaps the child whatever happens.
        let mut daemon = Self {
            child,
            addr: String::new(),
            stderr_lines,
        };
        let stderr = daemon.child.stderr.take().unwrap();
        std::thread::spawn(move || {
            // Drain the pipe whatever happens: a full channel drops lines, it never stops reading.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Err(mpsc::TrySendError::Disconnected(_)) = sender.try_send(line) {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while daemon.addr.is_empty() {
            let line = daemon
                .stderr_lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("the daemon logs its address within 30 s");
            if let Some(rest) = line.split("listening on http://").nth(1) {
                daemon.addr = rest.split_whitespace().next().unwrap().to_owned();
            }
        }
        daemon
    }

    pub fn signal(&self, signal: Signal) {
        kill_process(Pid::from_child(&self.child), signal).unwrap();
    }

    /// Waits for exit; returns the exit code and the rest of stderr.
    pub fn wait(&mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not exit within 15 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let rest: Vec<String> = self.stderr_lines.try_iter().collect();
        (status.code(), rest.join("\n"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One raw HTTP/1.1 request (the path is sent exactly as given, unnormalised); returns the
/// status and the body (responses to errors carry a Content-Length, not chunks).
pub fn http_raw(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).expect("daemon accepts connections");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    // The caller may declare a length of its own (to test a refusal before any body).
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-length"))
    {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status code");
    (status, body.to_owned())
}

/// A real S3-compatible server (`s3s-fs`, installed by `scripts/test.sh`) on a free loopback
/// port, serving the folders of `root` as buckets and checking request signatures; killed on
/// drop.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
}

/// The credentials [`S3Server`] accepts.
pub const S3_ACCESS_KEY: &str = "AKIAVBUSTEST";
pub const S3_SECRET_KEY: &str = "vbus-test-secret-0123456789";

impl S3Server {
    pub fn start(root: &Path) -> Self {
        let binary = std::env::var_os("VBUS_TEST_S3S_FS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/bin/s3s-fs")
            });
        assert!(
            binary.is_file(),
            "no S3 server at {}: run ./scripts/test.sh, which installs s3s-fs 0.14.1 there \
             (or set VBUS_TEST_S3S_FS)",
            binary.display()
        );
        std::fs::create_dir_all(root).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
        let server = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not listen within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// The environment a client of this server needs.
    pub fn env(&self) -> [(&'static str, &'static str); 2] {
        [
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
