//! The password file: one `username:secret` line per user.
//!
//! `secret` is `sha256:<hash>:<salt>`, where `<hash>` is the hex SHA-256 of the salt's text
//! followed by the password (`printf '%s%s' "$salt" "$password" | sha256sum`) and `<salt>`
//! is hex digits, random per user; or, for development only, `plain:<password>`. Blank
//! lines and lines starting with `#` are skipped. A username can't contain `:`.
//!
//! Errors name the line, never its text: a malformed line may hold a password.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};

const DIGEST_LEN: usize = 32;

/// The users of a password file, each with a salted SHA-256 digest of their password.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Passwords {
    users: HashMap<String, Entry>,
}

#[derive(Clone, PartialEq, Eq)]
struct Entry {
    /// Hashed before the password; empty for `plain:` entries.
    salt: Vec<u8>,
    digest: [u8; DIGEST_LEN],
}

/// Stands in for an unknown username so that checking one costs the same hash as checking
/// a known one: the time of a refusal does not tell which usernames exist.
const UNKNOWN: Entry = Entry {
    salt: Vec::new(),
    digest: [0; DIGEST_LEN],
};

/// Why a password file can't be used.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    #[error("cannot read: {0}")]
    Read(#[from] std::io::Error),
    #[error("line {line}: {problem}")]
    Line { line: usize, problem: LineProblem },
}

/// What is wrong with a line (described without quoting it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    #[error("expected username:sha256:<hash>:<salt> or username:plain:<password>")]
    NoSecret,
    #[error("empty username")]
    EmptyUsername,
    #[error("unknown scheme (expected sha256:<hash>:<salt> or plain:<password>)")]
    UnknownScheme,
    #[error("the sha256 hash is not 64 hex digits")]
    BadHash,
    #[error("the salt is not hex digits")]
    BadSalt,
    #[error("empty plain password")]
    EmptyPassword,
    #[error("the username is already on line {0}")]
    Duplicate(usize),
}

impl Passwords {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Passwords, PasswordFileError> {
        let text = std::fs::read_to_string(path)?;
        Passwords::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Passwords, PasswordFileError> {
        let mut users = HashMap::new();
        let mut lines_of: HashMap<String, usize> = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            let fail = |problem| PasswordFileError::Line {
                line: line_no,
                problem,
            };
            let line = line.strip_suffix('\r').unwrap_or(line);
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (username, secret) = line.split_once(':').ok_or(fail(LineProblem::NoSecret))?;
            if username.is_empty() {
                return Err(fail(LineProblem::EmptyUsername));
            }
            let entry = parse_secret(secret).map_err(fail)?;
            if let Some(first) = lines_of.insert(username.to_owned(), line_no) {
                return Err(fail(LineProblem::Duplicate(first)));
            }
            users.insert(username.to_owned(), entry);
        }
        Ok(Passwords { users })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether the file lists `username` (other authentication sources decide for those
    /// it doesn't).
    pub fn contains(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    /// Whether `password` is `username`'s, compared in constant time.
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        let unknown = UNKNOWN;
        let (entry, known) = match self.users.get(username) {
            Some(entry) => (entry, true),
            None => (&unknown, false),
        };
        let same = same_digest(&digest(&entry.salt, password), &entry.digest);
        // Both are computed whatever the username, for the timing reason above.
        known & same
    }
}

/// The digests are never shown: `Debug` of a configuration ends up in logs.
impl fmt::Debug for Passwords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Passwords({} users)", self.users.len())
    }
}

fn parse_secret(secret: &str) -> Result<Entry, LineProblem> {
    let (scheme, rest) = secret.split_once(':').ok_or(LineProblem::NoSecret)?;
    match scheme {
        "sha256" => {
            let (hash, salt) = rest.trim().split_once(':').ok_or(LineProblem::BadSalt)?;
            let digest = parse_digest(hash.trim()).ok_or(LineProblem::BadHash)?;
            let salt = salt.trim();
            if salt.is_empty() || !salt.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(LineProblem::BadSalt);
            }
            Ok(Entry {
                salt: salt.as_bytes().to_vec(),
                digest,
            })
        }
        // The password is everything after `plain:`, colons and spaces included.
        "plain" if rest.is_empty() => Err(LineProblem::EmptyPassword),
        "plain" => Ok(Entry {
            salt: Vec::new(),
            digest: digest(&[], rest.as_bytes()),
        }),
        _ => Err(LineProblem::UnknownScheme),
    }
}

fn digest(salt: &[u8], password: &[u8]) -> [u8; DIGEST_LEN] {
    Sha256::new()
        .chain_update(salt)
        .chain_update(password)
        .finalize()
        .into()
}

fn parse_digest(hex: &str) -> Option<[u8; DIGEST_LEN]> {
    if hex.len() != DIGEST_LEN * 2 {
        return None;
    }
    let mut out = [0; DIGEST_LEN];
    for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        // from_str_radix alone would accept a sign.
        if !pair.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// Compares without an early exit, so the time does not tell how much of a guess matched.
fn same_digest(a: &[u8; DIGEST_LEN], b: &[u8; DIGEST_LEN]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the README's recipe prints for this salt and the password `s3cret`:
    /// `salt=00112233445566778899aabbccddeeff; printf 'alice:sha256:%s:%s\n'
    /// "$(printf '%s%s' "$salt" 's3cret' | sha256sum | cut -d' ' -f1)" "$salt"`.
    const ALICE: &str = "alice:sha256:\
        874ed15b5f87d911c777e1510c143c13d1614558744e357de5ee2a4ef92ec697:\
        00112233445566778899aabbccddeeff";

    fn sha256_line(user: &str, salt: &str, password: &str) -> String {
        let hex: String = digest(salt.as_bytes(), password.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{user}:sha256:{hex}:{salt}")
    }

    fn problem(text: &str) -> (usize, LineProblem) {
        match Passwords::parse(text) {
            Err(PasswordFileError::Line { line, problem }) => (line, problem),
            other => panic!("expected a line error for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn the_readme_recipe_makes_a_line_that_verifies() {
        let p = Passwords::parse(ALICE).unwrap();
        assert!(p.verify("alice", b"s3cret"));
        assert!(!p.verify("alice", b"s3cret\n"));
        assert_eq!(
            ALICE,
            sha256_line("alice", "00112233445566778899aabbccddeeff", "s3cret")
        );
    }

    #[test]
    fn the_digest_is_sha256_of_the_salt_text_then_the_password() {
        // The well-known digest of "abc" pins the algorithm itself.
        let abc = digest(b"", b"abc");
        let hex: String = abc.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(digest(b"a", b"bc"), abc);
    }

    #[test]
    fn verifies_sha256_and_plain_users() {
        let text = format!(
            "# users\n\n{}\r\nbob:plain:pa:ss word \n  # indented comment\n",
            sha256_line("alice", "c0ffee00c0ffee00", "s3cret")
        );
        let p = Passwords::parse(&text).unwrap();
        assert_eq!(p.len(), 2);
        assert!(p.verify("alice", b"s3cret"));
        assert!(!p.verify("alice", b"s3cret "));
        assert!(!p.verify("alice", b""));
        assert!(!p.verify("Alice", b"s3cret"));
        assert!(
            p.verify("bob", b"pa:ss word "),
            "plain keeps colons and spaces"
        );
        assert!(!p.verify("bob", b"pa:ss word"));
        assert!(!p.verify("carol", b""));
        assert!(!p.verify("carol", b"s3cret"));
    }

    #[test]
    fn upper_case_hex_and_surrounding_spaces_are_accepted_in_sha256_lines() {
        let good = sha256_line("u", "ABCDEF01", "pw");
        let (head, salt) = good.rsplit_once(':').unwrap();
        let (user_scheme, hash) = head.rsplit_once(':').unwrap();
        let text = format!("{user_scheme}: {} : {salt} \n", hash.to_uppercase());
        let p = Passwords::parse(&text).unwrap();
        assert!(p.verify("u", b"pw"));
    }

    #[test]
    fn an_empty_file_has_no_users() {
        let p = Passwords::parse("").unwrap();
        assert!(p.is_empty());
        assert!(!p.verify("", b""));
        assert_eq!(format!("{p:?}"), "Passwords(0 users)");
    }

    #[test]
    fn malformed_lines_are_named_by_number() {
        let ok = sha256_line("a", "00ff", "x");
        assert_eq!(problem("alice"), (1, LineProblem::NoSecret));
        assert_eq!(problem("alice:secret"), (1, LineProblem::NoSecret));
        assert_eq!(problem(":plain:x"), (1, LineProblem::EmptyUsername));
        assert_eq!(
            problem(&format!("{ok}\nb:md5:abc")),
            (2, LineProblem::UnknownScheme)
        );
        assert_eq!(problem("b:sha256:abcd:00"), (1, LineProblem::BadHash));
        let bad_digit = format!("b:sha256:{}:00", "g".repeat(64));
        assert_eq!(problem(&bad_digit), (1, LineProblem::BadHash));
        let signed = format!("b:sha256:+1{}:00", "0".repeat(62));
        assert_eq!(problem(&signed), (1, LineProblem::BadHash));
        let hash = "0".repeat(64);
        assert_eq!(
            problem(&format!("b:sha256:{hash}")),
            (1, LineProblem::BadSalt)
        );
        assert_eq!(
            problem(&format!("b:sha256:{hash}:")),
            (1, LineProblem::BadSalt)
        );
        assert_eq!(
            problem(&format!("b:sha256:{hash}:xyz")),
            (1, LineProblem::BadSalt)
        );
        assert_eq!(problem("b:plain:"), (1, LineProblem::EmptyPassword));
        assert_eq!(
            problem(&format!("{ok}\n# c\n{ok}")),
            (3, LineProblem::Duplicate(1))
        );
    }

    #[test]
    fn errors_never_quote_the_line() {
        for text in [
            "alice:hunter2",
            "alice:md5:hunter2",
            "alice:sha256:hunter2:00",
        ] {
            let message = Passwords::parse(text).unwrap_err().to_string();
            assert!(!message.contains("hunter2"), "{message}");
            assert!(message.starts_with("line 1: "), "{message}");
        }
    }

    #[test]
    fn load_reads_a_file_and_reports_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        std::fs::write(&path, "u:plain:p\n").unwrap();
        assert!(Passwords::load(&path).unwrap().verify("u", b"p"));
        let err = Passwords::load(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(err, PasswordFileError::Read(_)), "{err:?}");
        assert!(err.to_string().starts_with("cannot read: "), "{err}");
    }

    #[test]
    fn digests_compare_by_every_byte() {
        let a = [7u8; DIGEST_LEN];
        let mut b = a;
        assert!(same_digest(&a, &b));
        b[DIGEST_LEN - 1] ^= 1;
        assert!(!same_digest(&a, &b));
        b = a;
        b[0] ^= 0x80;
        assert!(!same_digest(&a, &b));
    }
}
