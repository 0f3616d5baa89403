//! Spawning and controlling real `skein` processes.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a node may take to print both listening lines.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(10);
/// How long `terminate()` waits for the process to exit.
pub const EXIT_DEADLINE: Duration = Duration::from_secs(10);

/// Path of the `skein` binary: `$SKEIN_BIN`, else `<target>/<profile>/skein`
/// next to the test executable (`<target>/<profile>/deps/<test>-<hash>`).
pub fn skein_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SKEIN_BIN") {
        let p = PathBuf::from(p);
        assert!(p.exists(), "SKEIN_BIN={} does not exist", p.display());
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable has no <target>/<profile>/deps parent");
    let bin = profile_dir.join(format!("skein{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        panic!(
            "skein binary not found at {}.\nBuild it first:\n    cargo build -p skein-broker --bin skein && cargo test --workspace\n(or point SKEIN_BIN at a skein binary)",
            bin.display()
        );
    }
    bin
}

/// Configuration for a node; reusable so a node can be restarted identically.
#[derive(Clone, Debug, Default)]
pub struct NodeBuilder {
    envs: Vec<(String, String)>,
    args: Vec<String>,
    data_dir: Option<PathBuf>,
    mqtt_port: Option<u16>,
    grpc: Option<String>,
    stderr_path: Option<PathBuf>,
}

impl NodeBuilder {
    /// Sets an environment variable (e.g. `SKEIN_MAX_KEEPALIVE`).
    pub fn env(mut self, k: &str, v: impl ToString) -> Self {
        self.envs.push((k.to_string(), v.to_string()));
        self
    }
    /// Adds an extra command-line argument.
    pub fn arg(mut self, a: impl ToString) -> Self {
        self.args.push(a.to_string());
        self
    }
    /// Uses an existing data directory (default: a fresh temp dir owned by the node).
    pub fn data_dir(mut self, p: impl AsRef<Path>) -> Self {
        self.data_dir = Some(p.as_ref().to_path_buf());
        self
    }
    /// Fixed MQTT port (default 0 = ephemeral).
    pub fn mqtt_port(mut self, p: u16) -> Self {
        self.mqtt_port = Some(p);
        self
    }
    /// The cluster gRPC listener address (`--grpc`; default `127.0.0.1:0`, so parallel
    /// tests never collide on the default 7070).
    pub fn grpc(mut self, addr: impl ToString) -> Self {
        self.grpc = Some(addr.to_string());
        self
    }
    /// Sends the node's stderr to this file (opened for writing, e.g. `/dev/full`)
    /// instead of a pipe the harness reads; [`Node::stderr`] is then empty.
    pub fn stderr_path(mut self, p: impl AsRef<Path>) -> Self {
        self.stderr_path = Some(p.as_ref().to_path_buf());
        self
    }

    /// Spawns the node and waits for both listening lines; panics (with the
    /// node's stderr) on failure.
    pub fn start(self) -> Node {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`NodeBuilder::start`], answering why the node did not start instead of panicking
    /// (a port picked free and taken by another test before the node bound it, say).
    pub fn try_start(self) -> Result<Node, String> {
        let tmp = match &self.data_dir {
            Some(_) => None,
            None => Some(tempfile::tempdir().expect("tempdir")),
        };
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| tmp.as_ref().unwrap().path().to_path_buf());
        let port = self.mqtt_port.unwrap_or(0);
        let proc = spawn_and_wait(&self, &data_dir, port)?;
        Ok(Node {
            builder: self,
            proc: Some(proc),
            data_dir,
            _tmp: tmp,
        })
    }

    /// Runs the binary with this configuration expecting it to exit by itself
    /// (e.g. on a configuration error) within `timeout`. A fresh temp data
    /// dir is used unless one was given.
    pub fn run_to_exit(self, timeout: Duration) -> ExitOutput {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| tmp.path().to_path_buf());
        let mut child = self
            .command(&dir, self.mqtt_port.unwrap_or(0))
            .spawn()
            .expect("spawn skein");
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take());
        let out_t = std::thread::spawn(move || read_all(out));
        let err_t = std::thread::spawn(move || err.map(read_all).unwrap_or_default());
        let start = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                break st;
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "skein did not exit within {timeout:?}; stderr:\n{}",
                    err_t.join().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        ExitOutput {
            status,
            stdout: out_t.join().unwrap_or_default(),
            stderr: err_t.join().unwrap_or_default(),
        }
    }

    fn command(&self, data_dir: &Path, mqtt_port: u16) -> Command {
        let mut cmd = Command::new(skein_bin());
        cmd.arg("--mqtt")
            .arg(format!("127.0.0.1:{mqtt_port}"))
            .arg("--http")
            .arg("127.0.0.1:0")
            .arg("--grpc")
            .arg(self.grpc.as_deref().unwrap_or("127.0.0.1:0"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(match &self.stderr_path {
                Some(path) => std::fs::File::options()
                    .write(true)
                    .open(path)
                    .map(Stdio::from)
                    .unwrap_or_else(|e| panic!("opening {} for stderr: {e}", path.display())),
                None => Stdio::piped(),
            });
        // Settings come only from the test: drop SKEIN_* inherited from the
        // developer's shell (and the harness's own SKEIN_BIN).
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SKEIN_") {
                cmd.env_remove(&k);
            }
        }
        // plain (no ANSI colour) logs in failure output
        cmd.env("NO_COLOR", "1");
        // SKEIN_TEST_PARK_IDLE_MS=N runs every node with that park_idle_ms unless the test
        // sets one: the whole suite then exercises parked connections.
        if let Some(ms) = std::env::var_os("SKEIN_TEST_PARK_IDLE_MS") {
            cmd.env("SKEIN_PARK_IDLE_MS", ms);
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }
}

/// Result of [`NodeBuilder::run_to_exit`].
#[derive(Debug)]
pub struct ExitOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

fn read_all(mut r: impl Read) -> String {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    String::from_utf8_lossy(&v).into_owned()
}

struct Proc {
    child: Child,
    mqtt_addr: SocketAddr,
    http_addr: SocketAddr,
    /// From the `grpc listening on` line (printed before the other two).
    grpc_addr: Option<SocketAddr>,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
}

fn spawn_and_wait(b: &NodeBuilder, data_dir: &Path, port: u16) -> Result<Proc, String> {
    let mut child = b
        .command(data_dir, port)
        .spawn()
        .map_err(|e| format!("spawning {}: {e}", skein_bin().display()))?;
    let stderr = Arc::new(Mutex::new(String::new()));
    let stdout = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel::<String>();
    {
        let out = child.stdout.take().unwrap();
        let stdout = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                stdout.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        let stderr = stderr.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(err);
            let mut line = String::new();
            while let Ok(n) = r.read_line(&mut line) {
                if n == 0 {
                    break;
                }
                stderr.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
    }
    let deadline = Instant::now() + STARTUP_DEADLINE;
    let (mut mqtt, mut http, mut grpc) = (None, None, None);
    while mqtt.is_none() || http.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(a) = line.trim().strip_prefix("mqtt listening on ") {
                    mqtt = Some(
                        a.trim()
                            .parse::<SocketAddr>()
                            .map_err(|e| format!("bad address in {line:?}: {e}"))?,
                    );
                } else if let Some(a) = line.trim().strip_prefix("grpc listening on ") {
                    grpc = a.trim().parse::<SocketAddr>().ok();
                } else if let Some(a) = line.trim().strip_prefix("http listening on ") {
                    http = Some(
                        a.trim()
                            .parse::<SocketAddr>()
                            .map_err(|e| format!("bad address in {line:?}: {e}"))?,
                    );
                }
            }
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                // let the stderr thread catch up
                std::thread::sleep(Duration::from_millis(50));
                return Err(format!(
                    "skein did not print both listening lines within {STARTUP_DEADLINE:?} ({e:?}); exit: {status:?}\n--- stdout ---\n{}--- stderr ---\n{}",
                    stdout.lock().unwrap(),
                    stderr.lock().unwrap()
                ));
            }
        }
    }
    Ok(Proc {
        child,
        mqtt_addr: mqtt.unwrap(),
        http_addr: http.unwrap(),
        grpc_addr: grpc,
        stderr,
        stdout,
    })
}

/// A running (or stopped) skein process with its own data directory.
pub struct Node {
    builder: NodeBuilder,
    proc: Option<Proc>,
    data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Node {
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    /// A node with default settings on ephemeral ports.
    pub fn start() -> Node {
        NodeBuilder::default().start()
    }

    fn proc(&self) -> &Proc {
        self.proc.as_ref().expect("node is not running")
    }

    pub fn mqtt_addr(&self) -> SocketAddr {
        self.proc().mqtt_addr
    }
    pub fn mqtt_port(&self) -> u16 {
        self.mqtt_addr().port()
    }
    pub fn http_addr(&self) -> SocketAddr {
        self.proc().http_addr
    }
    /// The address of an optional listener (`mqtts`, `ws`, `wss`) from its `<name> listening
    /// on` line (printed before the mqtt line, so it is there once the node started).
    pub fn listener_addr(&self, name: &str) -> SocketAddr {
        let prefix = format!("{name} listening on ");
        self.stdout()
            .lines()
            .find_map(|l| l.trim().strip_prefix(&prefix)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("the node printed no {prefix:?} line"))
    }

    /// The cluster gRPC address, as the node printed it.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.proc()
            .grpc_addr
            .expect("the node printed no grpc listening line")
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    pub fn pid(&self) -> u32 {
        self.proc().child.id()
    }
    /// Everything the node wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.proc
            .as_ref()
            .map(|p| p.stderr.lock().unwrap().clone())
            .unwrap_or_default()
    }
    /// Everything the node wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.proc
            .as_ref()
            .map(|p| p.stdout.lock().unwrap().clone())
            .unwrap_or_default()
    }

    /// Returns the exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.proc
            .as_mut()
            .and_then(|p| p.child.try_wait().ok().flatten())
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let p = self.proc.as_mut().expect("node is not running");
        let _ = p.child.kill();
        let _ = p.child.wait();
    }

    /// SIGTERM (via `kill -TERM <pid>`), then waits for the exit (deadline
    /// [`EXIT_DEADLINE`]) and returns the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.pid();
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("running kill -TERM");
        assert!(st.success(), "kill -TERM {pid} failed");
        self.wait_exit(EXIT_DEADLINE)
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.try_wait() {
                return st;
            }
            if start.elapsed() > deadline {
                let err = self.stderr();
                self.kill9();
                panic!("skein did not exit within {deadline:?}; stderr:\n{err}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Restarts the node with the same configuration, data dir and MQTT port
    /// (a still-running process is SIGKILLed first; call `terminate()` first
    /// for a graceful restart).
    pub fn restart(&mut self) {
        let port = self
            .proc
            .as_ref()
            .map(|p| p.mqtt_addr.port())
            .expect("node never started");
        if let Some(p) = self.proc.as_mut() {
            if p.child.try_wait().ok().flatten().is_none() {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
        let old_err = self.stderr();
        // The port was just released; retry briefly in case the OS is slow to free it.
        let mut last = String::new();
        for _ in 0..10 {
            match spawn_and_wait(&self.builder, &self.data_dir, port) {
                Ok(p) => {
                    p.stderr
                        .lock()
                        .unwrap()
                        .insert_str(0, &format!("{old_err}--- restart ---\n"));
                    self.proc = Some(p);
                    return;
                }
                Err(e) => {
                    last = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        panic!("restart on port {port} failed: {last}");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            let _ = p.child.kill();
            let _ = p.child.wait();
            if std::thread::panicking() {
                // let the drain thread pick up the last lines
                std::thread::sleep(Duration::from_millis(50));
                eprintln!(
                    "----- skein stderr (mqtt {}) -----\n{}----- end skein stderr -----",
                    p.mqtt_addr,
                    p.stderr.lock().unwrap()
                );
            }
        }
    }
}
