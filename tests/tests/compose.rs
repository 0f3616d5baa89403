//! `docker-compose.yml` starts a three-node cluster from the image: the nodes find each
//! other by their service names, elect a leader, turn ready, and a publish on one reaches a
//! subscriber on another. Runs the project under its own name, image and host ports
//! (`SKEIN_IMAGE`, `SKEIN_COMPOSE_*_PORT_i`) and removes it all (`down -v`, the image)
//! afterwards. Prints `skipped:` where no Docker engine or no docker-compose answers.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use skein_tests::chart::{build_image, docker_available, repo_root, run};
use skein_tests::clients::v3::{Client, QoS};
use skein_tests::http_get;

const FORM_DEADLINE: Duration = Duration::from_secs(90);

/// The compose project: `down -v` and the image removed when dropped.
struct Project {
    name: String,
    image: String,
    env: Vec<(String, String)>,
}

impl Project {
    fn compose(&self) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.arg("--file")
            .arg(repo_root().join("docker-compose.yml"))
            .args(["--project-name", &self.name])
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn logs(&self) -> String {
        self.compose()
            .args(["logs", "--no-color", "--tail", "40"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self
            .compose()
            .args(["down", "--volumes", "--timeout", "5"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("docker")
            .args(["rmi", "--force", &self.image])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn compose_available() -> bool {
    Command::new("docker-compose")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_file_starts_a_three_node_cluster() {
    if !docker_available() || !compose_available() {
        println!("skipped: no Docker engine or no docker-compose answers");
        return;
    }
    let name = format!("skein-chart-compose-{}", std::process::id());
    let image = format!("{name}:test");
    build_image(&image);
    // Ports picked free, held together so that no two are the same.
    let held: Vec<std::net::TcpListener> = (0..6)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    let ports: Vec<u16> = held
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect();
    drop(held);
    let mut env = vec![(String::from("SKEIN_IMAGE"), image.clone())];
    for i in 0..3 {
        env.push((
            format!("SKEIN_COMPOSE_MQTT_PORT_{}", i + 1),
            ports[i].to_string(),
        ));
        env.push((
            format!("SKEIN_COMPOSE_HTTP_PORT_{}", i + 1),
            ports[3 + i].to_string(),
        ));
    }
    let project = Project { name, image, env };
    run(project.compose().args(["up", "--detach", "--no-build"]));

    let http = |i: usize| SocketAddr::from(([127, 0, 0, 1], ports[3 + i]));
    let mqtt = |i: usize| SocketAddr::from(([127, 0, 0, 1], ports[i]));
    let end = Instant::now() + FORM_DEADLINE;
    for i in 0..3 {
        loop {
            if let Ok((200, _)) = http_get(http(i), "/readyz").await {
                break;
            }
            assert!(
                Instant::now() < end,
                "node {} never turned ready:\n{}",
                i + 1,
                project.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Each node's own record (name, MQTT address) is a membership change it commits after
    // it joined: ready does not wait for the others' to reach node 2.
    loop {
        let (status, body) = http_get(http(1), "/api/v1/cluster").await.expect("cluster");
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("JSON");
        let members = v["members"].as_array().expect("members");
        let names: Vec<&str> = members.iter().filter_map(|m| m["name"].as_str()).collect();
        let formed = names == ["skein-1", "skein-2", "skein-3"]
            && members.iter().all(|m| m["role"] == "voter")
            && v["leader_id"].as_u64().is_some();
        if formed {
            break;
        }
        assert!(
            Instant::now() < end,
            "no leader and three named voters: {body}\n{}",
            project.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut subscriber = Client::connect(mqtt(2), "compose-sub").await;
    subscriber.subscribe("compose/t", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(mqtt(0), "compose-pub").await;
    publisher
        .publish("compose/t", QoS::AtLeastOnce, false, b"across".to_vec())
        .await;
    let got = subscriber.recv_within(Duration::from_secs(10)).await;
    assert_eq!(&got.payload[..], b"across");
    publisher.disconnect().await;
    subscriber.disconnect().await;
}
