//! The CI short form of partition mode on Docker (issue 14): the node image built here
//! from the `skein` binary cargo built beside `skein-chaos`, three containers on the
//! run's private networks, two rounds that each cut one node off its peers (`docker
//! network disconnect`) and heal it, under QoS 1 traffic. Skipped with a message where no
//! Docker engine answers.
//!
//! It asserts what holds today: the cluster forms and settles after every heal, traffic
//! flows, the cut and the heal happen, no client id has two live connections, the
//! registries agree, events and registries name each node by its own container IP, and
//! the run leaves no container, network, volume or image tag behind, and no acknowledged
//! message is lost (`lost` 0: the 10-round form has lost none since registrations of a
//! node marked down are refused). `duplicates` is printed with the whole verdict but not
//! asserted: one same-connection copy was seen in 1 of 3 ten-round runs (chaos/README.md,
//! "Latest results").

use std::process::{Command, Stdio};

use serde_json::Value;

fn docker_answers() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn docker_lines(args: &[&str]) -> Vec<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(out.status.success(), "docker {args:?} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn two_cuts_on_docker_heal_with_no_double_owner_and_real_node_ips() {
    if !docker_answers() {
        println!("skipped: no Docker engine answers (`docker info` failed): partition mode on Docker needs one");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_skein-chaos"))
        .args(["--partition", "--partition-net", "docker"])
        .args(["--rounds", "2", "--seed", "7"])
        .output()
        .expect("run skein-chaos");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // The whole verdict, in the test's output whatever happens next.
    println!("{stdout}");
    let context = format!("{stdout}\n--- stderr:\n{stderr}");
    let code = out.status.code();
    assert!(
        matches!(code, Some(0 | 1)),
        "the run could not be made ({:?}):\n{context}",
        out.status
    );
    let json: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("the last line is not the JSON verdict ({e}):\n{context}"));
    assert_eq!(json["rounds"], 2, "{context}");
    assert!(json["published_acked"].as_u64() > Some(0), "{context}");
    assert_eq!(json["double_owners"], 0, "{context}");
    assert_eq!(json["lost"], 0, "{context}");
    assert_eq!(json["registries_equal"], true, "{context}");
    assert!(json["node_ip_events"].as_u64() > Some(0), "{context}");
    assert_eq!(json["node_ip_wrong"], 0, "{context}");
    for invariant in [
        "traffic",
        "lost",
        "double_owners",
        "registries_equal",
        "node_ip",
        "cluster_settled",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("PASS {invariant}:"))),
            "{invariant} did not pass:\n{context}"
        );
    }
    assert!(
        stderr.contains("nodes as Docker containers"),
        "not run on Docker:\n{context}"
    );
    for round in 1..=2 {
        assert!(
            stderr.contains(&format!(
                "round {round}/2: docker network disconnect (peers) of node"
            )),
            "round {round} cut no node:\n{context}"
        );
        let healed = format!("round {round}: node ");
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(&healed) && l.ends_with(" healed")),
            "round {round} healed no node:\n{context}"
        );
    }
    assert!(!stderr.contains("the fault failed"), "{context}");

    // Everything the run made is gone: its containers, volumes, networks and image tag.
    let prefix = stderr
        .split("networks ")
        .nth(1)
        .and_then(|rest| rest.split("-clients").next())
        .unwrap_or_else(|| panic!("no network name in the log:\n{context}"))
        .to_owned();
    assert!(prefix.starts_with("skein-chaos-"), "{prefix}");
    let name = format!("name={prefix}-");
    assert_eq!(
        docker_lines(&["ps", "--all", "--quiet", "--filter", &name]),
        Vec::<String>::new()
    );
    assert_eq!(
        docker_lines(&["network", "ls", "--quiet", "--filter", &name]),
        Vec::<String>::new()
    );
    assert_eq!(
        docker_lines(&["volume", "ls", "--quiet", "--filter", &name]),
        Vec::<String>::new()
    );
    let tag = prefix.trim_start_matches("skein-chaos-");
    let image = format!("skein-chaos:{tag}");
    assert_eq!(
        docker_lines(&["images", "--quiet", &image]),
        Vec::<String>::new(),
        "{image} is still there"
    );
}
