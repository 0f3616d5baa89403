//! A minimal Redis client: RESP2 over plain TCP, enough for `AUTH`, `SELECT` and
//! pipelined `XADD`s. The `redis` crate would bring a URL/IDNA stack and its own runtime
//! glue (~30 crates) for these three commands.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where to connect and how to log in, from a `redis://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port`, as `TcpStream::connect` takes it.
    pub addr: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: Option<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("{0:?}: rediss:// (TLS) is not supported yet")]
    Tls(String),
    #[error("{0:?} is not a redis://[[user]:password@]host[:port][/db] URL")]
    Invalid(String),
}

/// Parses `redis://[[user]:password@]host[:port][/db]` (port 6379 by default).
pub fn parse_url(url: &str) -> Result<Target, UrlError> {
    let invalid = || UrlError::Invalid(url.to_owned());
    if url.starts_with("rediss://") {
        return Err(UrlError::Tls(url.to_owned()));
    }
    let rest = url.strip_prefix("redis://").ok_or_else(invalid)?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => (Some(userinfo), host),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(info) => {
            let (user, password) = info.split_once(':').unwrap_or(("", info));
            let user = percent_decode(user).ok_or_else(invalid)?;
            let password = percent_decode(password).ok_or_else(invalid)?;
            (
                (!user.is_empty()).then_some(user),
                (!password.is_empty()).then_some(password),
            )
        }
    };
    let has_port = match host.rfind(']') {
        // [v6] or [v6]:port
        Some(close) => host[close..].contains(':'),
        None => host.contains(':'),
    };
    if host.is_empty() || host.starts_with(':') || host.contains(['/', '?', '#', ' ']) {
        return Err(invalid());
    }
    let addr = if has_port {
        let port = host.rsplit_once(':').map(|(_, p)| p).unwrap_or("");
        port.parse::<u16>().map_err(|_| invalid())?;
        host.to_owned()
    } else {
        format!("{host}:6379")
    };
    let db = match path.trim_end_matches('/') {
        "" => None,
        n => Some(n.parse().map_err(|_| invalid())?),
    };
    Ok(Target {
        addr,
        username,
        password,
        db,
    })
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A reply, RESP2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    /// The server refused the command (`-ERR ...`); the connection is still usable.
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

#[derive(Debug, thiserror::Error)]
pub enum RespError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("protocol: {0}")]
    Protocol(&'static str),
    #[error("connection closed by the server")]
    Closed,
    #[error("{0} refused: {1}")]
    Refused(&'static str, String),
}

/// Largest reply accepted; larger means a confused peer, not Redis answering XADD.
const MAX_REPLY: usize = 64 * 1024 * 1024;

/// One connection.
pub struct Connection {
    stream: TcpStream,
    buf: BytesMut,
    timeout: Duration,
}

impl Connection {
    /// Connects, authenticates and selects the database, each step within `timeout`.
    pub async fn connect(target: &Target, timeout: Duration) -> Result<Connection, RespError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(&target.addr))
            .await
            .map_err(|_| RespError::Timeout)??;
        stream.set_nodelay(true)?;
        let mut conn = Connection {
            stream,
            buf: BytesMut::with_capacity(4096),
            timeout,
        };
        if let Some(password) = &target.password {
            let mut auth: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = &target.username {
                auth.push(user.as_bytes());
            }
            auth.push(password.as_bytes());
            conn.expect_ok("AUTH", &auth).await?;
        }
        if let Some(db) = target.db {
            let db = db.to_string();
            conn.expect_ok("SELECT", &[b"SELECT", db.as_bytes()])
                .await?;
        }
        Ok(conn)
    }

    async fn expect_ok(&mut self, name: &'static str, args: &[&[u8]]) -> Result<(), RespError> {
        match self.pipeline(&[args.to_vec()]).await?.pop() {
            Some(Reply::Error(e)) => Err(RespError::Refused(name, e)),
            Some(_) => Ok(()),
            None => Err(RespError::Protocol("no reply")),
        }
    }

    /// Sends every command in one write, then reads one reply per command.
    pub async fn pipeline(&mut self, commands: &[Vec<&[u8]>]) -> Result<Vec<Reply>, RespError> {
        let mut out = Vec::new();
        for args in commands {
            encode(&mut out, args);
        }
        tokio::time::timeout(self.timeout, self.stream.write_all(&out))
            .await
            .map_err(|_| RespError::Timeout)??;
        let mut replies = Vec::with_capacity(commands.len());
        while replies.len() < commands.len() {
            replies.push(self.read_reply().await?);
        }
        Ok(replies)
    }

    async fn read_reply(&mut self) -> Result<Reply, RespError> {
        loop {
            if let Some((reply, used)) = parse(&self.buf)? {
                self.buf.advance(used);
                return Ok(reply);
            }
            if self.buf.len() > MAX_REPLY {
                return Err(RespError::Protocol("reply too large"));
            }
            let n = tokio::time::timeout(self.timeout, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| RespError::Timeout)??;
            if n == 0 {
                return Err(RespError::Closed);
            }
        }
    }
}

/// A command as a RESP array of bulk strings.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one reply from the front of `buf`: `None` if it is incomplete, else the reply
/// and the bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, RespError> {
    parse_at(buf, 0)
}

/// Nesting beyond this is a confused peer (XADD replies are flat).
const MAX_DEPTH: usize = 8;

fn parse_at(buf: &[u8], depth: usize) -> Result<Option<(Reply, usize)>, RespError> {
    if depth > MAX_DEPTH {
        return Err(RespError::Protocol("reply nested too deeply"));
    }
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let Some((&kind, line)) = buf[..end].split_first() else {
        return Err(RespError::Protocol("empty reply line"));
    };
    let text = || String::from_utf8_lossy(line).into_owned();
    let number = || -> Result<i64, RespError> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(RespError::Protocol("bad number"))
    };
    let after = end + 2;
    match kind {
        b'+' => Ok(Some((Reply::Status(text()), after))),
        b'-' => Ok(Some((Reply::Error(text()), after))),
        b':' => Ok(Some((Reply::Integer(number()?), after))),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Reply::Bulk(None), after)));
            }
            let len = usize::try_from(len).map_err(|_| RespError::Protocol("bad length"))?;
            if len > MAX_REPLY {
                return Err(RespError::Protocol("bulk string too large"));
            }
            if buf.len() < after + len + 2 {
                return Ok(None);
            }
            if &buf[after + len..after + len + 2] != b"\r\n" {
                return Err(RespError::Protocol("bulk string not terminated"));
            }
            let data = buf[after..after + len].to_vec();
            Ok(Some((Reply::Bulk(Some(data)), after + len + 2)))
        }
        b'*' => {
            let count = number()?;
            if count < 0 {
                return Ok(Some((Reply::Array(None), after)));
            }
            let count = usize::try_from(count).map_err(|_| RespError::Protocol("bad count"))?;
            let mut items = Vec::with_capacity(count.min(1024));
            let mut at = after;
            for _ in 0..count {
                match parse_at(&buf[at..], depth + 1)? {
                    Some((item, used)) => {
                        items.push(item);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), at)))
        }
        _ => Err(RespError::Protocol("unknown reply type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("redis://127.0.0.1:6380").unwrap(),
            Target {
                addr: "127.0.0.1:6380".into(),
                username: None,
                password: None,
                db: None,
            }
        );
        assert_eq!(parse_url("redis://cache").unwrap().addr, "cache:6379");
        assert_eq!(parse_url("redis://[::1]").unwrap().addr, "[::1]:6379");
        assert_eq!(parse_url("redis://[::1]:7000/").unwrap().addr, "[::1]:7000");
        let t = parse_url("redis://app:p%40ss@10.0.0.2:6379/3").unwrap();
        assert_eq!(t.username.as_deref(), Some("app"));
        assert_eq!(t.password.as_deref(), Some("p@ss"));
        assert_eq!(t.db, Some(3));
        let t = parse_url("redis://:secret@h").unwrap();
        assert_eq!((t.username, t.password.as_deref()), (None, Some("secret")));
        assert!(matches!(parse_url("rediss://h"), Err(UrlError::Tls(_))));
        for bad in [
            "http://h",
            "redis://",
            "redis://h:notaport",
            "redis://h:70000",
            "redis://h/x",
            "redis://:6379",
            "redis://u:%zz@h",
        ] {
            assert!(matches!(parse_url(bad), Err(UrlError::Invalid(_))), "{bad}");
        }
    }

    #[test]
    fn commands_encode_as_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode(&mut out, &[b"XADD", b"s", b"*", b"k", b""]);
        assert_eq!(
            out,
            b"*5\r\n$4\r\nXADD\r\n$1\r\ns\r\n$1\r\n*\r\n$1\r\nk\r\n$0\r\n\r\n"
        );
    }

    #[test]
    fn replies_parse_whole_or_not_at_all() {
        let cases: Vec<(&[u8], Reply)> = vec![
            (b"+OK\r\n", Reply::Status("OK".into())),
            (b"-ERR wrong\r\n", Reply::Error("ERR wrong".into())),
            (b":42\r\n", Reply::Integer(42)),
            (b"$-1\r\n", Reply::Bulk(None)),
            (b"$3\r\n1-0\r\n", Reply::Bulk(Some(b"1-0".to_vec()))),
            (
                b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n",
                Reply::Array(Some(vec![
                    Reply::Bulk(Some(b"a".to_vec())),
                    Reply::Array(Some(vec![Reply::Integer(1)])),
                ])),
            ),
        ];
        for (wire, reply) in cases {
            assert_eq!(parse(wire).unwrap(), Some((reply, wire.len())));
            for cut in 0..wire.len() {
                assert_eq!(parse(&wire[..cut]).unwrap(), None, "{:?}", &wire[..cut]);
            }
        }
        assert!(parse(b"?x\r\n").is_err());
        assert!(parse(b"$3\r\nabcd\r\n").is_err());
        assert!(parse(b":x\r\n").is_err());
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2);
        assert!(parse(deep.as_bytes()).is_err());
    }
}
