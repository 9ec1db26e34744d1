//! Notifications of an unattended queue: a log file (one timestamped line per event) and a
//! webhook (HTTP POST of a JSON body to an `http://` URL; plain HTTP/1.1 over TCP with
//! 5 s deadlines, no TLS: put a relay in front of an `https://` service).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors of notifications.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The webhook URL is not `http://host[:port][/path]`.
    #[error("webhook `{url}`: {problem}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        problem: String,
    },
    /// The POST failed.
    #[error("webhook `{url}`: {during}: {message}")]
    Post {
        /// The URL.
        url: String,
        /// What was under way.
        during: &'static str,
        /// The error or the HTTP status line.
        message: String,
    },
    /// The log file could not be opened.
    #[error("log file {file}: {source}")]
    Log {
        /// The file.
        file: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

const DEADLINE: Duration = Duration::from_secs(5);

/// A parsed `http://` webhook URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Webhook {
    url: String,
    host: String,
    port: u16,
    path: String,
}

impl Webhook {
    /// Parses `http://host[:port][/path]`.
    ///
    /// # Errors
    /// [`NotifyError::Url`] naming the problem.
    pub fn parse(url: &str) -> Result<Self, NotifyError> {
        let bad = |problem: &str| NotifyError::Url {
            url: url.into(),
            problem: problem.into(),
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// URLs are supported (no TLS)"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| bad("the port is not a number"))?),
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Self {
            url: url.into(),
            host: host.into(),
            port,
            path: path.into(),
        })
    }

    /// POSTs `body` (JSON) and waits for the status line; 2xx is success.
    ///
    /// # Errors
    /// [`NotifyError::Post`] for a connection failure, a deadline passed or a non-2xx
    /// status.
    pub fn post(&self, body: &serde_json::Value) -> Result<(), NotifyError> {
        let err = |during, message: String| NotifyError::Post {
            url: self.url.clone(),
            during,
            message,
        };
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| err("resolving", e.to_string()))?
            .next()
            .ok_or_else(|| err("resolving", "no address".into()))?;
        let mut s = TcpStream::connect_timeout(&addr, DEADLINE)
            .map_err(|e| err("connecting", e.to_string()))?;
        let _ = s.set_read_timeout(Some(DEADLINE));
        let _ = s.set_write_timeout(Some(DEADLINE));
        let body = body.to_string();
        let req = format!(
            "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: stemflow\r\n\r\n{body}",
            self.path,
            self.host,
            self.port,
            body.len()
        );
        s.write_all(req.as_bytes())
            .map_err(|e| err("sending", e.to_string()))?;
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        while !got.contains(&b'\n') && got.len() < 4096 {
            let n = s
                .read(&mut buf)
                .map_err(|e| err("reading the reply", e.to_string()))?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        let status = text.lines().next().unwrap_or("").to_string();
        let code = status.split_whitespace().nth(1).unwrap_or("");
        if code.starts_with('2') {
            Ok(())
        } else {
            Err(err("reply", format!("status line `{status}`")))
        }
    }
}

/// Where queue events go: a log file and a webhook, both optional. Failures to notify are
/// written to the log and the tracing output, never fatal to the queue.
pub struct Notifier {
    log: Option<File>,
    webhook: Option<Webhook>,
    /// Webhook failures so far.
    pub webhook_failures: u64,
}

impl Notifier {
    /// Opens `log` for appending (creating it) and parses `webhook`.
    ///
    /// # Errors
    /// [`NotifyError::Log`] or [`NotifyError::Url`].
    pub fn new(log: Option<&Path>, webhook: Option<&str>) -> Result<Self, NotifyError> {
        let log = match log {
            Some(p) => Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| NotifyError::Log {
                        file: p.into(),
                        source,
                    })?,
            ),
            None => None,
        };
        Ok(Self {
            log,
            webhook: webhook.map(Webhook::parse).transpose()?,
            webhook_failures: 0,
        })
    }

    /// A log function for a [`crate::engine::Session`] writing to the same places as
    /// [`log`](Self::log) (stdout and the log file).
    pub fn session_log(&self) -> crate::engine::LogFn {
        let file = self
            .log
            .as_ref()
            .and_then(|f| f.try_clone().ok())
            .map(std::sync::Mutex::new);
        Box::new(move |msg: &str| {
            println!("{msg}");
            if let Some(Ok(mut f)) = file.as_ref().map(|f| f.lock()) {
                let t = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                let _ = writeln!(f, "{t} {msg}");
            }
        })
    }

    /// Writes a log line (and prints it to stdout).
    pub fn log(&mut self, msg: &str) {
        let t = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        println!("{msg}");
        if let Some(f) = &mut self.log {
            let _ = writeln!(f, "{t} {msg}");
            let _ = f.flush();
        }
    }

    /// Logs `msg` and POSTs `{event, message, ...details}` to the webhook.
    pub fn notify(&mut self, event: &str, msg: &str, details: serde_json::Value) {
        self.log(msg);
        if let Some(w) = &self.webhook {
            let mut body = serde_json::json!({ "event": event, "message": msg });
            if let (Some(b), serde_json::Value::Object(d)) = (body.as_object_mut(), details) {
                b.extend(d);
            }
            if let Err(e) = w.post(&body) {
                self.webhook_failures += 1;
                tracing::warn!("{e}");
                self.log(&format!("notification failed: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn parses_urls() {
        let w = Webhook::parse("http://127.0.0.1:8080/hooks/a").unwrap();
        assert_eq!((w.port, w.path.as_str()), (8080, "/hooks/a"));
        assert_eq!(Webhook::parse("http://example.org").unwrap().port, 80);
        assert!(
            Webhook::parse("https://x")
                .unwrap_err()
                .to_string()
                .contains("TLS")
        );
        assert!(Webhook::parse("http://h:x/").is_err());
    }

    #[test]
    fn posts_json_to_a_local_server() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !String::from_utf8_lossy(&got).contains("}") {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
            String::from_utf8(got).unwrap()
        });
        let w = Webhook::parse(&format!("http://127.0.0.1:{port}/hook")).unwrap();
        w.post(&serde_json::json!({"event": "queue_end"})).unwrap();
        let req = server.join().unwrap();
        assert!(req.starts_with("POST /hook HTTP/1.1"), "{req}");
        assert!(req.contains("\"event\":\"queue_end\""), "{req}");
    }
}
