//! The Helm chart fits the binary: the StatefulSet `helm template` renders for 3 replicas
//! runs as three pods (containers of the image on a private Docker network, reachable
//! under the headless Service's names; local processes when no Docker engine answers),
//! with exactly the command, arguments and environment the chart gives them. They form
//! one cluster with a leader, `/readyz` turns ready, a publish on one pod reaches a
//! subscriber on another, and after one pod is stopped and added back (a rolling restart,
//! its volume kept) the cluster heals; a fourth pod (a scale-up) joins with the same
//! template and leaves as the chart's README says; a pod killed and replaced heals too.
//! A setting the binary refuses stops its pod and fails the test with the pod's output.
//!
//! `SKEIN_CHART_PODS=local` runs the local processes even where Docker answers.
//! Needs helm and python3 with PyYAML (`.ci/run` installs both); without them it prints
//! `skipped:`, except under CI (`CI` set), where it fails.

use std::time::{Duration, Instant};

use serde_json::Value;
use skein_tests::chart::{self, DockerPods, LocalPods, PodSpec, Pods};
use skein_tests::clients::v3::{Client, QoS};
use skein_tests::node::skein_bin;
use skein_tests::{http_get, http_request};

const NAMESPACE: &str = "skein-test";
/// Forming a cluster of debug builds on a busy 2-core machine, containers starting too.
const FORM_DEADLINE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_fits_the_binary() {
    let Some(helm) = chart::find_helm() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "helm is not installed (.ci/run installs it)"
        );
        println!("skipped: helm is not installed (.ci/run installs it; or set SKEIN_HELM)");
        return;
    };
    // Every SKEIN_* variable the chart can set is a setting the binary knows (an unknown
    // one would be ignored, not refused), with every optional part on too.
    let all_on = chart::repo_root().join("charts/skein/ci/all-on-values.yaml");
    let all_on = [String::from("-f"), all_on.display().to_string()];
    let help = chart::run(std::process::Command::new(skein_bin()).arg("--help"));
    for name in chart::env_names(&chart::render(&helm, "skein", NAMESPACE, &all_on)) {
        if name.starts_with("SKEIN_") {
            assert!(
                help.contains(&format!(", {name}\n")),
                "{name} is no setting of skein"
            );
        }
    }

    let prefix = format!("skein-chart-test-{}", std::process::id());
    let values: Vec<String> = [
        "replicaCount=3",
        "cluster.initialMembers=3",
        &format!("image.repository={prefix}"),
        "image.tag=test",
    ]
    .iter()
    .flat_map(|v| [String::from("--set"), v.to_string()])
    .collect();
    let spec = PodSpec::from_manifests(&chart::render(&helm, "skein", NAMESPACE, &values));
    assert_eq!(spec.replicas, 3);
    assert_eq!(spec.image, format!("{prefix}:test"));
    // SKEIN_CHART_PODS=local runs the fallback on a machine with Docker too.
    let local = std::env::var("SKEIN_CHART_PODS").is_ok_and(|v| v == "local");
    let mut pods: Box<dyn Pods> = if !local && chart::docker_available() {
        Box::new(DockerPods::new(spec.clone(), &prefix, 4))
    } else {
        if !local {
            println!(
                "no Docker engine answers: running the chart's pods as three local processes instead"
            );
        }
        Box::new(LocalPods::new(spec.clone(), 4))
    };
    println!("pods as {}", pods.kind());
    for ordinal in 0..3 {
        pods.start(ordinal);
    }

    for ordinal in 0..3 {
        wait_ready(pods.as_mut(), ordinal).await;
    }
    let leader = check_cluster(pods.as_mut(), &spec, &[0, 1, 2]).await;
    println!("formed: leader node {leader}");
    publish_across(pods.as_ref(), 0, 2, "first").await;

    // A rolling restart of one pod: stopped as the kubelet stops it (SIGTERM to the
    // binary as PID 1: a clean exit), the other two carry on, it comes back with its
    // volume and rejoins.
    assert_eq!(
        pods.stop(1, spec.termination_grace),
        "exit code 0",
        "{}",
        pods.logs(1)
    );
    publish_across(pods.as_ref(), 2, 0, "one away").await;
    pods.start(1);
    wait_ready(pods.as_mut(), 1).await;
    check_cluster(pods.as_mut(), &spec, &[0, 1, 2]).await;
    publish_across(pods.as_ref(), 1, 0, "back").await;
    publish_across(pods.as_ref(), 2, 1, "to the restarted pod").await;

    // Scaled up: pod 3 (node 4) is past the peers list and joins through pod 0 with the
    // same template. Scaled down as the chart's README says: its member removed, then it.
    pods.start(3);
    wait_ready(pods.as_mut(), 3).await;
    check_cluster(pods.as_mut(), &spec, &[0, 1, 2, 3]).await;
    publish_across(pods.as_ref(), 3, 1, "from the added pod").await;
    let (status, body) = http_request(
        pods.addr(2, "http"),
        "DELETE",
        "/api/v1/cluster/members/4",
        &[],
        "",
    )
    .await
    .expect("DELETE the added member");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        pods.stop(3, spec.termination_grace),
        "exit code 0",
        "{}",
        pods.logs(3)
    );
    check_cluster(pods.as_mut(), &spec, &[0, 1, 2]).await;
    publish_across(pods.as_ref(), 0, 1, "after the scale-down").await;

    // A pod lost at once (SIGKILL), replaced with its volume: the cluster heals again.
    pods.remove(2);
    publish_across(pods.as_ref(), 0, 1, "two left").await;
    pods.start(2);
    wait_ready(pods.as_mut(), 2).await;
    check_cluster(pods.as_mut(), &spec, &[0, 1, 2]).await;
    publish_across(pods.as_ref(), 1, 2, "after the crash").await;
}

/// Waits for pod `ordinal`'s `/readyz` to answer 200; fails at once with its output if it
/// exits (a setting the binary refused, say).
async fn wait_ready(pods: &mut dyn Pods, ordinal: usize) {
    let end = Instant::now() + FORM_DEADLINE;
    let mut last;
    loop {
        if let Some(status) = pods.exited(ordinal) {
            panic!("pod {ordinal} exited ({status}):\n{}", pods.logs(ordinal));
        }
        match http_get(pods.addr(ordinal, "http"), "/readyz").await {
            Ok((200, _)) => return,
            Ok((status, body)) => last = format!("{status} {body}"),
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= end {
            panic!(
                "pod {ordinal}'s /readyz never answered 200 (last: {last}):\n{}",
                pods.logs(ordinal)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every pod in `ordinals` sees the same leader and just those members as voters, each
/// named by its pod, dialled at its headless name and advertising its pod IP (local
/// addresses for processes), node id = ordinal + 1; the leader
/// reaches every member. Returns the leader's id.
async fn check_cluster(pods: &mut dyn Pods, spec: &PodSpec, ordinals: &[usize]) -> u64 {
    let end = Instant::now() + FORM_DEADLINE;
    loop {
        let mut leaders = Vec::new();
        let mut problem = None;
        for &ordinal in ordinals {
            match overview(pods, ordinal).await {
                Some(v) => {
                    if let Err(p) = member_check(&v, spec, pods, ordinal, ordinals) {
                        problem = Some(p);
                    }
                    leaders.push(v["leader_id"].as_u64());
                }
                None => problem = Some(format!("pod {ordinal} did not answer")),
            }
        }
        let leader = leaders[0];
        let agreed = leader.is_some() && leaders.iter().all(|l| *l == leader);
        if agreed && problem.is_none() {
            let leader = leader.expect("some");
            let seen = overview(pods, (leader - 1) as usize).await;
            let all_reachable = seen.as_ref().is_some_and(|v| {
                v["members"]
                    .as_array()
                    .is_some_and(|m| m.iter().all(|m| m["reachable"] == true))
            });
            if all_reachable {
                return leader;
            }
            problem = Some(format!("the leader does not reach every member: {seen:?}"));
        }
        if Instant::now() >= end {
            panic!(
                "the pods did not agree on one cluster: leaders {leaders:?}, {}",
                problem.unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn overview(pods: &mut dyn Pods, ordinal: usize) -> Option<Value> {
    match http_get(pods.addr(ordinal, "http"), "/api/v1/cluster").await {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

fn member_check(
    v: &Value,
    spec: &PodSpec,
    pods: &dyn Pods,
    ordinal: usize,
    ordinals: &[usize],
) -> Result<(), String> {
    if v["node_id"] != (ordinal + 1) as u64 || v["node_name"] != spec.pod_name(ordinal) {
        return Err(format!("pod {ordinal} is not node {}: {v}", ordinal + 1));
    }
    let members = v["members"].as_array().cloned().unwrap_or_default();
    if members.len() != ordinals.len() {
        return Err(format!("pod {ordinal} sees {} members: {v}", members.len()));
    }
    for &j in ordinals {
        let (grpc, mqtt) = (pods.grpc_name(j), pods.advertised_mqtt(j));
        let found = members.iter().any(|m| {
            m["id"] == (j + 1) as u64
                && m["name"] == spec.pod_name(j)
                && m["grpc"] == grpc.as_str()
                && m["mqtt"] == mqtt.as_str()
                && m["role"] == "voter"
        });
        if !found {
            return Err(format!(
                "pod {ordinal}: no voter {} named {} at {grpc}, MQTT {mqtt}: {v}",
                j + 1,
                spec.pod_name(j)
            ));
        }
    }
    Ok(())
}

/// A QoS 1 publish on pod `from` reaches a subscriber on pod `to`.
async fn publish_across(pods: &dyn Pods, from: usize, to: usize, what: &str) {
    let topic = format!("chart/{from}-to-{to}");
    let mut subscriber = Client::connect(pods.addr(to, "mqtt"), &format!("sub-{to}-{from}")).await;
    subscriber.subscribe(&topic, QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(pods.addr(from, "mqtt"), &format!("pub-{from}-{to}")).await;
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, what.as_bytes().to_vec())
        .await;
    let got = subscriber.recv_within(Duration::from_secs(10)).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        (topic.as_str(), what.as_bytes())
    );
    publisher.disconnect().await;
    subscriber.disconnect().await;
}
