//! `mosquitto_pub` / `mosquitto_sub` helpers for interoperability tests.

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

fn require(tool: &str) {
    let ok = Command::new(tool)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        ok,
        "{tool} not found: install it with `apt-get install -y mosquitto-clients`"
    );
}

/// Runs `mosquitto_pub -h <ip> -p <port> <args..>` to completion (10 s
/// deadline) and asserts it succeeded.
pub fn mosquitto_pub(addr: SocketAddr, args: &[&str]) -> Output {
    let out = try_mosquitto_pub(addr, args);
    assert!(
        out.status.success(),
        "mosquitto_pub {args:?} failed: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `mosquitto_pub -h <ip> -p <port> <args..>` to completion (10 s deadline), whether
/// it succeeds or not (a TLS handshake the broker refuses, say).
pub fn try_mosquitto_pub(addr: SocketAddr, args: &[&str]) -> Output {
    require("mosquitto_pub");
    let child = Command::new("mosquitto_pub")
        .arg("-h")
        .arg(addr.ip().to_string())
        .arg("-p")
        .arg(addr.port().to_string())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mosquitto_pub");
    wait_output(child, Duration::from_secs(10))
}

/// One message printed by [`Sub`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubMsg {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub payload: String,
}

const FORMAT: &str = "MSG|%t|%q|%r|%p";

/// A running `mosquitto_sub` (started with `-d` and a fixed `-F` format).
pub struct Sub {
    child: Child,
    rx: Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl Sub {
    /// Starts `mosquitto_sub -h <ip> -p <port> -d -F .. <args..>` and returns
    /// once its SUBACK was received. Pass `-C n -W secs` so it ends by itself;
    /// do not pass `-v`/`-F`.
    pub fn start(addr: SocketAddr, args: &[&str]) -> Sub {
        require("mosquitto_sub");
        // mosquitto_sub's stdout is block-buffered when piped; line-buffer it
        // with coreutils' stdbuf so the SUBACK line arrives promptly.
        let mut cmd = if Command::new("stdbuf")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok()
        {
            let mut c = Command::new("stdbuf");
            c.arg("-oL").arg("mosquitto_sub");
            c
        } else {
            Command::new("mosquitto_sub")
        };
        let mut child = cmd
            .arg("-h")
            .arg(addr.ip().to_string())
            .arg("-p")
            .arg(addr.port().to_string())
            .arg("-d")
            .arg("-F")
            .arg(FORMAT)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mosquitto_sub");
        let mut out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match out.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let mut sub = Sub {
            child,
            rx,
            seen: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !String::from_utf8_lossy(&sub.seen).contains("received SUBACK") {
            let left = deadline.saturating_duration_since(Instant::now());
            match sub.rx.recv_timeout(left) {
                Ok(chunk) => sub.seen.extend(chunk),
                Err(_) => panic!(
                    "mosquitto_sub {args:?} did not report a SUBACK: {}",
                    String::from_utf8_lossy(&sub.seen)
                ),
            }
        }
        sub
    }

    /// Waits (deadline) for mosquitto_sub to exit by itself and returns the
    /// messages it printed plus whether it exited successfully.
    pub fn finish(mut self, deadline: Duration) -> (Vec<SubMsg>, bool) {
        let start = Instant::now();
        let success = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st.success();
            }
            if start.elapsed() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break false;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The reader thread ends at EOF, which closes the channel.
        while let Ok(chunk) = self.rx.recv_timeout(Duration::from_secs(2)) {
            self.seen.extend(chunk);
        }
        let text = String::from_utf8_lossy(&self.seen).into_owned();
        let msgs = text
            .lines()
            .filter_map(|l| l.strip_prefix("MSG|"))
            .map(|l| {
                let mut it = l.splitn(4, '|');
                SubMsg {
                    topic: it.next().unwrap_or_default().to_string(),
                    qos: it.next().unwrap_or("9").parse().unwrap_or(9),
                    retain: it.next() == Some("1"),
                    payload: it.next().unwrap_or_default().to_string(),
                }
            })
            .collect();
        (msgs, success)
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_output(mut child: Child, deadline: Duration) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
