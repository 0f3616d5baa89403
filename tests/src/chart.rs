//! The Helm chart's StatefulSet, rendered by `helm template` and run as pods: Docker
//! containers of the image on a private network, with the headless Service's DNS names as
//! network aliases, or, without a Docker engine, local processes with those names and
//! ports mapped onto 127.0.0.1. Each pod gets what Kubernetes would give it: its name as
//! host name, the downward API's fields, `$(VAR)` expanded, its volumes and the security
//! context the chart asks for.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::node::skein_bin;

/// The repository's root (this crate is `tests/` in it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `helm`: `$SKEIN_HELM`, else on the PATH, else where `.ci/run` installs it.
pub fn find_helm() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SKEIN_HELM") {
        return Some(PathBuf::from(p));
    }
    if Command::new("helm")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        return Some(PathBuf::from("helm"));
    }
    let home = std::env::var_os("HOME")?;
    let cached = Path::new(&home).join(".cache/skein-ci/bin/helm");
    cached.exists().then_some(cached)
}

/// Whether a Docker engine answers.
pub fn docker_available() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Builds the image `name` from the test's binary with `scripts/docker-image.sh` (no
/// registry needed).
pub fn build_image(name: &str) {
    run(Command::new(repo_root().join("scripts/docker-image.sh"))
        .arg(name)
        .env("SKEIN_BIN", skein_bin()));
}

/// Runs a command to completion; its stdout, or a panic naming it with its stderr.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Renders the chart with more `helm template` arguments (`--set k=v`, `-f file`) and
/// returns its documents as JSON (helm prints YAML; Python's PyYAML, which `.ci/run`
/// installs, turns it into JSON).
pub fn render(helm: &Path, release: &str, namespace: &str, args: &[String]) -> Vec<Value> {
    let mut helm_cmd = Command::new(helm);
    helm_cmd
        .args(["template", release])
        .arg(repo_root().join("charts/skein"))
        .args(["--namespace", namespace])
        .args(args);
    let yaml = run(&mut helm_cmd);
    let mut python = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml\n\
             json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (with PyYAML) to read helm's YAML");
    {
        use std::io::Write;
        let mut stdin = python.stdin.take().expect("stdin");
        stdin.write_all(yaml.as_bytes()).expect("write YAML");
    }
    let out = python.wait_with_output().expect("python3");
    assert!(
        out.status.success(),
        "YAML to JSON failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from python3")
}

/// One environment variable of the container spec.
#[derive(Debug, Clone)]
pub enum EnvSource {
    Value(String),
    /// A downward API field (`metadata.name`, `status.podIP`, `metadata.namespace`).
    Field(String),
}

/// What the StatefulSet asks of each pod, read from the rendered manifests.
#[derive(Debug, Clone)]
pub struct PodSpec {
    /// The StatefulSet's name: pod i is `<name>-i`.
    pub name: String,
    pub namespace: String,
    pub replicas: usize,
    /// The headless Service the StatefulSet names.
    pub service: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, EnvSource)>,
    /// Container ports by name (`mqtt`, `http`, `grpc`).
    pub ports: HashMap<String, u16>,
    /// Mount paths of the volume claim templates (data that outlives a pod).
    pub persistent: Vec<String>,
    /// Mount paths of emptyDir volumes.
    pub scratch: Vec<String>,
    pub run_as: Option<(u64, u64)>,
    /// How long the kubelet waits after SIGTERM (`terminationGracePeriodSeconds`).
    pub termination_grace: Duration,
    pub read_only_root: bool,
    pub drop_all_capabilities: bool,
    pub no_privilege_escalation: bool,
}

impl PodSpec {
    /// Reads the StatefulSet (and checks its headless Service) from rendered documents.
    pub fn from_manifests(docs: &[Value]) -> PodSpec {
        let sts = docs
            .iter()
            .find(|d| d["kind"] == "StatefulSet")
            .expect("the chart renders a StatefulSet");
        let spec = &sts["spec"];
        let service = str_of(&spec["serviceName"]);
        let headless = docs
            .iter()
            .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == service.as_str())
            .unwrap_or_else(|| panic!("no Service {service} for the StatefulSet's serviceName"));
        assert_eq!(headless["spec"]["clusterIP"], "None", "{headless}");
        assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
        let pod = &spec["template"]["spec"];
        let containers = pod["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1, "one container per pod");
        let c = &containers[0];
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| a.iter().map(str_of).collect())
                .unwrap_or_default()
        };
        let env = c["env"]
            .as_array()
            .expect("env")
            .iter()
            .map(|e| {
                let name = str_of(&e["name"]);
                let source = if let Some(v) = e.get("value") {
                    EnvSource::Value(str_of(v))
                } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    EnvSource::Field(path.to_owned())
                } else {
                    panic!("{name}: a source this test cannot give a pod: {e}")
                };
                (name, source)
            })
            .collect();
        let ports = c["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .map(|p| {
                let port = p["containerPort"].as_u64().expect("containerPort") as u16;
                (str_of(&p["name"]), port)
            })
            .collect();
        let claims: Vec<String> = spec["volumeClaimTemplates"]
            .as_array()
            .map(|a| a.iter().map(|t| str_of(&t["metadata"]["name"])).collect())
            .unwrap_or_default();
        let empty_dirs: Vec<String> = pod["volumes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|v| v.get("emptyDir").is_some())
                    .map(|v| str_of(&v["name"]))
                    .collect()
            })
            .unwrap_or_default();
        let (mut persistent, mut scratch) = (Vec::new(), Vec::new());
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let (name, path) = (str_of(&m["name"]), str_of(&m["mountPath"]));
            if claims.contains(&name) {
                persistent.push(path);
            } else if empty_dirs.contains(&name) {
                scratch.push(path);
            } else {
                panic!("volume {name}: a kind this test cannot give a pod");
            }
        }
        let (pod_sc, sc) = (&pod["securityContext"], &c["securityContext"]);
        let uid = sc["runAsUser"].as_u64().or(pod_sc["runAsUser"].as_u64());
        let gid = sc["runAsGroup"].as_u64().or(pod_sc["runAsGroup"].as_u64());
        PodSpec {
            name: str_of(&sts["metadata"]["name"]),
            namespace: str_of(&sts["metadata"]["namespace"]),
            replicas: spec["replicas"].as_u64().expect("replicas") as usize,
            service,
            image: str_of(&c["image"]),
            command: strings(&c["command"]),
            args: strings(&c["args"]),
            env,
            ports,
            persistent,
            scratch,
            run_as: uid.map(|u| (u, gid.unwrap_or(u))),
            // Kubernetes' default when the spec leaves it out.
            termination_grace: Duration::from_secs(
                pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30),
            ),
            read_only_root: sc["readOnlyRootFilesystem"] == true,
            drop_all_capabilities: sc["capabilities"]["drop"]
                .as_array()
                .is_some_and(|d| d.iter().any(|c| c == "ALL")),
            no_privilege_escalation: sc["allowPrivilegeEscalation"] == false,
        }
    }

    pub fn pod_name(&self, ordinal: usize) -> String {
        format!("{}-{ordinal}", self.name)
    }

    /// Pod `ordinal`'s stable name under the headless Service.
    pub fn pod_host(&self, ordinal: usize) -> String {
        format!(
            "{}.{}.{}.svc.cluster.local",
            self.pod_name(ordinal),
            self.service,
            self.namespace
        )
    }

    pub fn port(&self, name: &str) -> u16 {
        *self
            .ports
            .get(name)
            .unwrap_or_else(|| panic!("no container port named {name}"))
    }

    /// The container's environment for pod `ordinal` at `ip`, as the kubelet makes it:
    /// downward API fields filled in, `$(VAR)` of earlier variables expanded.
    pub fn env_for(&self, ordinal: usize, ip: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for (name, source) in &self.env {
            let value = match source {
                EnvSource::Field(path) => match path.as_str() {
                    "metadata.name" => self.pod_name(ordinal),
                    "metadata.namespace" => self.namespace.clone(),
                    "status.podIP" => ip.to_owned(),
                    other => panic!("{name}: downward API field {other} not given by this test"),
                },
                EnvSource::Value(v) => expand(v, &out),
            };
            out.push((name.clone(), value));
        }
        out
    }
}

/// The names of the environment variables every container of `docs` sets.
pub fn env_names(docs: &[Value]) -> Vec<String> {
    let mut names = Vec::new();
    for doc in docs {
        let containers = doc["spec"]["template"]["spec"]["containers"].as_array();
        for c in containers.into_iter().flatten() {
            for e in c["env"].as_array().into_iter().flatten() {
                names.push(str_of(&e["name"]));
            }
        }
    }
    names
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => panic!("expected a string, got {other}"),
    }
}

/// Kubernetes' `$(VAR)` expansion: a variable defined earlier is substituted, `$$` is a
/// literal `$`, anything else stays as written.
fn expand(value: &str, defined: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after
            .strip_prefix('(')
            .and_then(|inner| inner.split_once(')'))
        {
            match defined.iter().rev().find(|(n, _)| n == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&rest[at..at + name.len() + 3]),
            }
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A place pods run: containers or local processes.
pub trait Pods {
    /// What the pods run on, for messages.
    fn kind(&self) -> &'static str;
    /// Starts (or starts again, with its data) pod `ordinal`.
    fn start(&mut self, ordinal: usize);
    /// Removes pod `ordinal` at once (SIGKILL); its persistent data stays.
    fn remove(&mut self, ordinal: usize);
    /// Stops pod `ordinal` as Kubernetes does (SIGTERM, then SIGKILL after `grace`) and
    /// removes it; its persistent data stays. Returns how it exited.
    fn stop(&mut self, ordinal: usize, grace: Duration) -> String;
    /// Where the test reaches pod `ordinal`'s container port `name` (on 127.0.0.1).
    fn addr(&self, ordinal: usize, name: &str) -> SocketAddr;
    /// The gRPC address the other members dial pod `ordinal` at: its headless name in
    /// containers, its mapped local address for processes.
    fn grpc_name(&self, ordinal: usize) -> String;
    /// The MQTT address pod `ordinal`'s events and member record name it by: the pod IP
    /// (downward API) and the MQTT port, mapped for processes.
    fn advertised_mqtt(&self, ordinal: usize) -> String;
    /// Whether pod `ordinal` has exited (with its exit code when known).
    fn exited(&mut self, ordinal: usize) -> Option<String>;
    /// What pod `ordinal` printed.
    fn logs(&self, ordinal: usize) -> String;
}

/// The pods as containers of the image on a private Docker network. Everything it makes
/// is named `<prefix>-...` and removed when it is dropped.
pub struct DockerPods {
    spec: PodSpec,
    prefix: String,
    network: String,
    subnet_base: String,
    image: String,
    /// Pods this may run: the StatefulSet's replicas and more (a scale-up).
    count: usize,
}

impl DockerPods {
    /// Builds the image from the test's binary with `scripts/docker-image.sh` and makes the
    /// network, for up to `count` pods.
    pub fn new(spec: PodSpec, prefix: &str, count: usize) -> DockerPods {
        let image = spec.image.clone();
        build_image(&image);
        let network = format!("{prefix}-net");
        // A subnet of our own, so that each pod's IP (the downward API's status.podIP) is
        // known before it starts; another network may hold a candidate already.
        let seed = std::process::id() as usize;
        let mut subnet_base = None;
        for attempt in 0..24 {
            let base = format!(
                "172.{}.{}",
                20 + (seed + attempt) % 12,
                (seed / 12 + attempt * 7) % 250 + 2
            );
            let created = Command::new("docker")
                .args(["network", "create", "--driver", "bridge", "--subnet"])
                .arg(format!("{base}.0/24"))
                .arg(&network)
                .output()
                .expect("docker network create");
            if created.status.success() {
                subnet_base = Some(base);
                break;
            }
        }
        let subnet_base = subnet_base.expect("no free /24 for the test's Docker network");
        DockerPods {
            spec,
            prefix: prefix.to_owned(),
            network,
            subnet_base,
            image,
            count,
        }
    }

    fn container(&self, ordinal: usize) -> String {
        format!("{}-{}", self.prefix, self.spec.pod_name(ordinal))
    }

    fn volume(&self, ordinal: usize, index: usize) -> String {
        format!("{}-data{index}-{ordinal}", self.prefix)
    }

    fn ip(&self, ordinal: usize) -> String {
        format!("{}.{}", self.subnet_base, 10 + ordinal)
    }
}

impl Pods for DockerPods {
    fn kind(&self) -> &'static str {
        "Docker containers"
    }

    fn start(&mut self, ordinal: usize) {
        let spec = &self.spec;
        let pod = spec.pod_name(ordinal);
        let mut cmd = Command::new("docker");
        cmd.args(["run", "--detach", "--name", &self.container(ordinal)])
            .args(["--hostname", &pod, "--network", &self.network])
            .args(["--ip", &self.ip(ordinal)])
            .args(["--network-alias", &spec.pod_host(ordinal)]);
        for port in ["mqtt", "http"] {
            cmd.args(["--publish", &format!("127.0.0.1::{}", spec.port(port))]);
        }
        if let Some((uid, gid)) = spec.run_as {
            cmd.args(["--user", &format!("{uid}:{gid}")]);
        }
        if spec.read_only_root {
            cmd.arg("--read-only");
        }
        if spec.drop_all_capabilities {
            cmd.args(["--cap-drop", "ALL"]);
        }
        if spec.no_privilege_escalation {
            cmd.args(["--security-opt", "no-new-privileges"]);
        }
        for (index, path) in spec.persistent.iter().enumerate() {
            cmd.args([
                "--volume",
                &format!("{}:{path}", self.volume(ordinal, index)),
            ]);
        }
        for path in &spec.scratch {
            cmd.args(["--tmpfs", path]);
        }
        for (name, value) in spec.env_for(ordinal, &self.ip(ordinal)) {
            cmd.args(["--env", &format!("{name}={value}")]);
        }
        let (entrypoint, rest) = spec.command.split_first().expect("a command");
        cmd.args(["--entrypoint", entrypoint, &self.image])
            .args(rest)
            .args(&spec.args);
        run(&mut cmd);
    }

    fn remove(&mut self, ordinal: usize) {
        run(Command::new("docker").args(["rm", "--force", &self.container(ordinal)]));
    }

    fn stop(&mut self, ordinal: usize, grace: Duration) -> String {
        let container = self.container(ordinal);
        run(Command::new("docker").args([
            "stop",
            "--time",
            &grace.as_secs().to_string(),
            &container,
        ]));
        let code = run(Command::new("docker").args([
            "inspect",
            "--format",
            "{{.State.ExitCode}}",
            &container,
        ]));
        run(Command::new("docker").args(["rm", &container]));
        format!("exit code {}", code.trim())
    }

    fn addr(&self, ordinal: usize, name: &str) -> SocketAddr {
        let port = self.spec.port(name);
        let out = run(Command::new("docker").args([
            "port",
            &self.container(ordinal),
            &format!("{port}/tcp"),
        ]));
        let line = out.lines().next().unwrap_or_default().trim();
        line.parse()
            .unwrap_or_else(|_| panic!("docker port said {out:?} for {name}"))
    }

    fn grpc_name(&self, ordinal: usize) -> String {
        format!("{}:{}", self.spec.pod_host(ordinal), self.spec.port("grpc"))
    }

    fn advertised_mqtt(&self, ordinal: usize) -> String {
        format!("{}:{}", self.ip(ordinal), self.spec.port("mqtt"))
    }

    fn exited(&mut self, ordinal: usize) -> Option<String> {
        let out = Command::new("docker")
            .args([
                "inspect",
                "--format",
                "{{.State.Running}} {{.State.ExitCode}}",
            ])
            .arg(self.container(ordinal))
            .output()
            .ok()?;
        let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        state
            .strip_prefix("false ")
            .map(|code| format!("exit code {code}"))
    }

    fn logs(&self, ordinal: usize) -> String {
        let out = Command::new("docker")
            .args(["logs", &self.container(ordinal)])
            .output();
        match out {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("(docker logs failed: {e})"),
        }
    }
}

impl Drop for DockerPods {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new("docker")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        for ordinal in 0..self.count {
            quiet(&["rm", "--force", "--volumes", &self.container(ordinal)]);
            for index in 0..self.spec.persistent.len() {
                quiet(&["volume", "rm", "--force", &self.volume(ordinal, index)]);
            }
        }
        quiet(&["network", "rm", &self.network]);
        quiet(&["rmi", "--force", &self.image]);
    }
}

/// The pods as local processes of the binary: pod names, headless names and container
/// ports mapped onto 127.0.0.1 and free ports, persistent mounts onto directories.
pub struct LocalPods {
    spec: PodSpec,
    dir: tempfile::TempDir,
    /// Per pod: container port → local port.
    ports: Vec<HashMap<u16, u16>>,
    children: Vec<Option<Child>>,
}

impl LocalPods {
    /// Up to `count` pods (the StatefulSet's replicas and more, for a scale-up).
    pub fn new(spec: PodSpec, count: usize) -> LocalPods {
        // Held together, then released, so that no two pods get the same port.
        let mut held = Vec::new();
        let ports = (0..count)
            .map(|_| {
                spec.ports
                    .values()
                    .map(|&port| {
                        let l = TcpListener::bind("127.0.0.1:0").expect("free port");
                        let local = l.local_addr().expect("addr").port();
                        held.push(l);
                        (port, local)
                    })
                    .collect()
            })
            .collect();
        drop(held);
        let children = (0..count).map(|_| None).collect();
        LocalPods {
            spec,
            dir: tempfile::tempdir().expect("temp dir"),
            ports,
            children,
        }
    }

    /// One `host:port` (optionally `ID@host:port`) of pod `ordinal`'s settings, local.
    fn localize(&self, ordinal: usize, entry: &str) -> String {
        let (id, addr) = match entry.split_once('@') {
            Some((id, addr)) => (format!("{id}@"), addr),
            None => (String::new(), entry),
        };
        let Some((host, port)) = addr.rsplit_once(':') else {
            return entry.to_owned();
        };
        let Ok(port) = port.parse::<u16>() else {
            return entry.to_owned();
        };
        let target = if host == "0.0.0.0" || host == "127.0.0.1" {
            Some(ordinal)
        } else {
            (0..self.ports.len()).find(|&j| self.spec.pod_host(j) == host)
        };
        match target.and_then(|j| self.ports[j].get(&port)) {
            Some(local) => format!("{id}127.0.0.1:{local}"),
            None => entry.to_owned(),
        }
    }

    fn log_path(&self, ordinal: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.spec.pod_name(ordinal)))
    }
}

impl Pods for LocalPods {
    fn kind(&self) -> &'static str {
        "local processes"
    }

    fn start(&mut self, ordinal: usize) {
        let spec = &self.spec;
        let pod = spec.pod_name(ordinal);
        let mut cmd = Command::new(skein_bin());
        cmd.args(spec.command.iter().skip(1))
            .args(&spec.args)
            .env_clear()
            .env("HOSTNAME", &pod);
        for (name, value) in spec.env_for(ordinal, "127.0.0.1") {
            let mut value = value
                .split(',')
                .map(|entry| self.localize(ordinal, entry))
                .collect::<Vec<_>>()
                .join(",");
            for (index, path) in spec.persistent.iter().enumerate() {
                if value == *path || value.starts_with(&format!("{path}/")) {
                    let local = self.dir.path().join(format!("{pod}-data{index}"));
                    value = value.replacen(path, local.to_str().expect("utf-8 path"), 1);
                }
            }
            cmd.env(name, value);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(ordinal))
            .expect("log file");
        cmd.stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .stdin(Stdio::null());
        self.children[ordinal] = Some(cmd.spawn().expect("spawn skein"));
    }

    fn remove(&mut self, ordinal: usize) {
        if let Some(mut child) = self.children[ordinal].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn stop(&mut self, ordinal: usize, grace: Duration) -> String {
        let Some(mut child) = self.children[ordinal].take() else {
            return String::from("not running");
        };
        run(Command::new("kill").args(["-TERM", &child.id().to_string()]));
        let end = Instant::now() + grace;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return match status.code() {
                    Some(code) => format!("exit code {code}"),
                    None => status.to_string(),
                };
            }
            if Instant::now() >= end {
                let _ = child.kill();
                let _ = child.wait();
                return String::from("killed after the grace period");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn addr(&self, ordinal: usize, name: &str) -> SocketAddr {
        let port = self.ports[ordinal][&self.spec.port(name)];
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn grpc_name(&self, ordinal: usize) -> String {
        let grpc = format!("{}:{}", self.spec.pod_host(ordinal), self.spec.port("grpc"));
        self.localize(ordinal, &grpc)
    }

    fn advertised_mqtt(&self, ordinal: usize) -> String {
        self.localize(ordinal, &format!("127.0.0.1:{}", self.spec.port("mqtt")))
    }

    fn exited(&mut self, ordinal: usize) -> Option<String> {
        let child = self.children[ordinal].as_mut()?;
        child
            .try_wait()
            .ok()
            .flatten()
            .map(|status| status.to_string())
    }

    fn logs(&self, ordinal: usize) -> String {
        std::fs::read_to_string(self.log_path(ordinal)).unwrap_or_default()
    }
}

impl Drop for LocalPods {
    fn drop(&mut self) {
        for ordinal in 0..self.children.len() {
            self.remove(ordinal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes() {
        let defined = vec![
            ("POD_NAME".to_owned(), "skein-1".to_owned()),
            ("NS".to_owned(), "mqtt".to_owned()),
        ];
        assert_eq!(
            expand("$(POD_NAME).h.$(NS):7070", &defined),
            "skein-1.h.mqtt:7070"
        );
        assert_eq!(expand("$(LATER)x", &defined), "$(LATER)x");
        assert_eq!(expand("$$(POD_NAME) $5 $", &defined), "$(POD_NAME) $5 $");
    }
}
