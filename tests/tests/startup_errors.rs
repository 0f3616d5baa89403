//! A node that cannot open its storage says why once, never claims to listen, and exits
//! non-zero.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use skein_tests::node::ExitOutput;
use skein_tests::Node;

const EXIT_DEADLINE: Duration = Duration::from_secs(20);

fn assert_failed_once(out: &ExitOutput, cause: &str) {
    assert!(
        !out.status.success(),
        "exited {:?}; stderr:\n{}",
        out.status,
        out.stderr
    );
    assert!(
        !out.stdout.contains("listening"),
        "a node that did not start claimed to listen:\n{}",
        out.stdout
    );
    assert_eq!(
        out.stderr.matches(cause).count(),
        1,
        "the cause {cause:?} must be printed exactly once; stderr:\n{}",
        out.stderr
    );
    // Every OS error in the output is that cause: nothing else printed it again.
    assert_eq!(
        out.stderr.matches("(os error").count(),
        1,
        "stderr:\n{}",
        out.stderr
    );
}

#[test]
fn a_data_dir_that_is_a_file_stops_the_node_with_one_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"just a file").unwrap();
    let out = Node::builder().data_dir(&file).run_to_exit(EXIT_DEADLINE);
    assert_failed_once(&out, "File exists");
    assert!(
        out.stderr.contains(&file.display().to_string()),
        "the message names the path:\n{}",
        out.stderr
    );
}

/// A read-only tmpfs, unmounted when dropped.
struct ReadOnlyMount {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl ReadOnlyMount {
    /// None (with the reason) where mounting is not possible (not root, no CAP_SYS_ADMIN).
    fn new() -> Result<ReadOnlyMount, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().to_path_buf();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(ReadOnlyMount { path, _dir: dir })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

#[test]
fn a_data_dir_on_a_read_only_file_system_stops_the_node_with_one_message() {
    let mount = match ReadOnlyMount::new() {
        Ok(m) => m,
        Err(why) => {
            eprintln!("SKIPPED: cannot mount a read-only tmpfs here ({why}); run as root");
            return;
        }
    };
    // The directory itself (exists, cannot be written) and one to be created in it.
    for data_dir in [mount.path().to_path_buf(), mount.path().join("data")] {
        let out = Node::builder()
            .data_dir(&data_dir)
            .run_to_exit(EXIT_DEADLINE);
        assert_failed_once(&out, "Read-only file system");
    }
}

#[test]
fn a_grpc_port_in_use_stops_the_node_with_one_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = Node::builder().grpc(addr).run_to_exit(EXIT_DEADLINE);
    assert_failed_once(&out, "Address already in use");
    assert!(
        out.stderr
            .contains(&format!("cannot listen for gRPC on {addr}")),
        "the message names the gRPC address:\n{}",
        out.stderr
    );
    assert_eq!(out.status.code(), Some(1), "stderr:\n{}", out.stderr);
}

#[test]
fn a_bad_peer_list_is_a_configuration_error_naming_the_setting() {
    for peers in ["1@host", "one@host:7070", "2@a:7070,3@b:7070"] {
        let out = Node::builder()
            .arg("--peers")
            .arg(peers)
            .run_to_exit(EXIT_DEADLINE);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{peers}: stderr:\n{}",
            out.stderr
        );
        assert!(!out.stdout.contains("listening"), "{peers}: {}", out.stdout);
        assert!(
            out.stderr.contains("--peers"),
            "{peers}: the message names the flag:\n{}",
            out.stderr
        );
        assert_eq!(
            out.stderr.lines().count(),
            1,
            "{peers}: one line:\n{}",
            out.stderr
        );
    }
}
