//! Test harness for "what returned as durable survives `kill -9`": a test re-runs itself
//! in a child process that writes into a directory, says so, and is killed with SIGKILL
//! before it can drop (and so flush) anything; the parent then reopens the directory.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

const DIR_ENV: &str = "SKEIN_STORAGE_KILL_CHILD_DIR";
const READY: &str = "skein-storage-kill-child: written";

/// Runs the test `test_path` (its full path, as `--exact` wants it) with `write` as the
/// child's half: in the child (re-run by the parent), `write` gets the directory, and the
/// child waits to be killed once it returned; in the parent, returns the directory the
/// killed child wrote into. Panics if the child ended before `write` returned.
pub(crate) fn write_then_kill_9(test_path: &str, write: impl FnOnce(&Path)) -> tempfile::TempDir {
    if let Some(dir) = std::env::var_os(DIR_ENV) {
        write(Path::new(&dir));
        println!("{READY}");
        std::thread::sleep(std::time::Duration::from_secs(60));
        std::process::exit(1)
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([test_path, "--exact", "--nocapture", "--test-threads=1"])
        .env(DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let ready = stdout
        .lines()
        .map_while(|l| l.ok())
        .any(|l| l.contains(READY));
    // Child::kill sends SIGKILL on Unix: the storage gets no chance to flush on drop.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(ready, "the child exited before it had written");
    dir
}
