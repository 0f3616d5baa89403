//! The ACL file, in Mosquitto's format, which operators already know:
//!
//! ```text
//! # rules before any `user` line are the anonymous clients' (no username)
//! topic read public/#
//! user alice
//! topic readwrite alice/#
//! topic deny alice/secret
//! # patterns apply to every client; %c is its client id, %u its username
//! pattern write devices/%c/up
//! pattern read devices/%u/down/#
//! ```
//!
//! `topic [read|write|readwrite|deny] FILTER` (no access word: readwrite), `user NAME`
//! (the rest of the line, spaces included), `pattern [access] FILTER`; blank lines and
//! lines starting with `#` are skipped; patterns apply wherever they appear. Errors name
//! the line and what is wrong with it.

use std::collections::HashMap;
use std::path::Path;

/// What a rule grants (or, for `Deny`, takes away).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Access {
    fn parse(word: &str) -> Option<Access> {
        match word {
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            "readwrite" => Some(Access::ReadWrite),
            "deny" => Some(Access::Deny),
            _ => None,
        }
    }

    pub fn reads(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }

    pub fn writes(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
}

/// One `topic` or `pattern` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub access: Access,
    pub filter: String,
}

/// The rules of an ACL file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AclRules {
    /// `topic` lines before the first `user` line: clients without a username.
    pub anonymous: Vec<Rule>,
    /// `topic` lines under each `user` line.
    pub users: HashMap<String, Vec<Rule>>,
    /// `pattern` lines, for every client, with `%c` / `%u` still in them.
    pub patterns: Vec<Rule>,
}

/// Why an ACL file can't be used.
#[derive(Debug, thiserror::Error)]
pub enum AclFileError {
    #[error("cannot read: {0}")]
    Read(#[from] std::io::Error),
    #[error("line {line}: {problem}")]
    Line { line: usize, problem: String },
}

impl AclRules {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<AclRules, AclFileError> {
        let text = std::fs::read_to_string(path)?;
        AclRules::parse(&text)
    }

    pub fn parse(text: &str) -> Result<AclRules, AclFileError> {
        let mut rules = AclRules::default();
        // None: still in the anonymous section.
        let mut user: Option<String> = None;
        for (index, raw) in text.lines().enumerate() {
            let fail = |problem: &str| AclFileError::Line {
                line: index + 1,
                problem: problem.to_owned(),
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = line
                .split_once(char::is_whitespace)
                .map_or((line, ""), |(k, r)| (k, r.trim()));
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(fail("user without a name"));
                    }
                    rules.users.entry(rest.to_owned()).or_default();
                    user = Some(rest.to_owned());
                }
                "topic" | "pattern" => {
                    let rule = parse_rule(rest).map_err(|p| fail(&p))?;
                    if keyword == "pattern" {
                        rules.patterns.push(rule);
                    } else if let Some(name) = &user {
                        rules.users.entry(name.clone()).or_default().push(rule);
                    } else {
                        rules.anonymous.push(rule);
                    }
                }
                other => {
                    return Err(fail(&format!(
                        "unknown keyword {:?} (expected user, topic or pattern)",
                        other.chars().take(32).collect::<String>()
                    )))
                }
            }
        }
        Ok(rules)
    }

    /// How many `topic` and `pattern` lines there are.
    pub fn len(&self) -> usize {
        self.anonymous.len()
            + self.patterns.len()
            + self.users.values().map(Vec::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `[access] FILTER`: the filter is the rest of the line (it may hold spaces).
fn parse_rule(rest: &str) -> Result<Rule, String> {
    let (access, filter) = match rest.split_once(char::is_whitespace) {
        Some((word, filter)) => match Access::parse(word) {
            Some(access) => (access, filter.trim()),
            None => (Access::ReadWrite, rest),
        },
        None => match Access::parse(rest) {
            Some(_) => return Err(String::from("access without a topic filter")),
            None => (Access::ReadWrite, rest),
        },
    };
    if filter.is_empty() {
        return Err(String::from("missing topic filter"));
    }
    if !crate::topic::valid_topic_filter(filter) {
        return Err(format!(
            "invalid topic filter {:?} (wildcards take a whole level; # only last)",
            filter.chars().take(64).collect::<String>()
        ));
    }
    Ok(Rule {
        access,
        filter: filter.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(access: Access, filter: &str) -> Rule {
        Rule {
            access,
            filter: filter.into(),
        }
    }

    #[test]
    fn sections_access_words_and_patterns() {
        let text = "# comment\n\
                    topic read public/#\n\
                    topic anon/rw\n\
                    \n\
                    user alice\n\
                    topic readwrite alice/#\n\
                    \ttopic deny alice/secret\n\
                    pattern write devices/%c/up\n\
                    user bob smith\n\
                    topic write with space/x y\n\
                    pattern read devices/%u/down/#\n";
        let r = AclRules::parse(text).unwrap();
        assert_eq!(
            r.anonymous,
            vec![
                rule(Access::Read, "public/#"),
                rule(Access::ReadWrite, "anon/rw")
            ]
        );
        assert_eq!(
            r.users["alice"],
            vec![
                rule(Access::ReadWrite, "alice/#"),
                rule(Access::Deny, "alice/secret")
            ]
        );
        assert_eq!(
            r.users["bob smith"],
            vec![rule(Access::Write, "with space/x y")]
        );
        assert_eq!(
            r.patterns,
            vec![
                rule(Access::Write, "devices/%c/up"),
                rule(Access::Read, "devices/%u/down/#")
            ]
        );
        assert_eq!(r.len(), 7);
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line, what) in [
            ("topic read a\nfrobnicate x\n", 2, "unknown keyword"),
            ("\n\nuser\n", 3, "user without a name"),
            ("topic read\n", 1, "access without a topic filter"),
            ("topic read a/#/b\n", 1, "invalid topic filter"),
            ("user a\npattern deny a+/b\n", 2, "invalid topic filter"),
            ("topic\n", 1, "missing topic filter"),
        ] {
            let e = AclRules::parse(text).unwrap_err().to_string();
            assert!(e.starts_with(&format!("line {line}: ")), "{e}");
            assert!(e.contains(what), "{e}");
        }
    }
}
