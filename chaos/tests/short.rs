//! The chaos suite's short forms, run against the `skein` binary cargo built beside
//! `skein-chaos` (the README's test command builds it first), on ports picked free.

use std::process::{Command, Output};

use serde_json::Value;

fn chaos(args: &[&str]) -> (Output, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_skein-chaos"))
        .args(args)
        .output()
        .expect("run skein-chaos");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or_default();
    let json: Value = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!("the last line is not the JSON verdict ({e}):\n{stdout}\n--- stderr:\n{stderr}")
    });
    eprintln!("{stdout}");
    (out, json)
}

fn assert_ok(out: &Output, json: &Value) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && json["ok"] == true,
        "an invariant failed ({}):\n{stdout}\n--- stderr:\n{stderr}",
        out.status
    );
    for line in stdout.lines().filter(|l| !l.starts_with('{')) {
        assert!(line.starts_with("PASS "), "{line}");
    }
}

/// No faults: the harness's whole path (cluster, watchers, subscribers, publishers, drain,
/// every check) against a healthy cluster, where every invariant must hold.
#[test]
fn a_healthy_cluster_holds_every_invariant() {
    let (out, json) = chaos(&["--rounds", "0", "--seed", "7"]);
    assert_ok(&out, &json);
    assert_eq!(json["rounds"], 0);
    assert_eq!(json["seed"], 7);
    assert!(json["published_acked"].as_u64().unwrap() > 0, "{json}");
    assert_eq!(json["lost"], 0);
    assert_eq!(json["double_owners"], 0);
    assert_eq!(json["registries_equal"], true);
}

/// The CI short form of issue 14: three fault rounds (SIGSTOPs of a follower, then of the
/// leader twice, each long enough for a mark down, a subscriber's CONNECT waiting on the
/// first stopped node; client moves and takeovers), every invariant holding. Seed 1's
/// fourth round (a SIGKILL and restart) is not part of it.
#[test]
fn three_fault_rounds_hold_every_invariant() {
    let (out, json) = chaos(&["--rounds", "3", "--seed", "1"]);
    assert_ok(&out, &json);
    assert_eq!(json["rounds"], 3);
}
