// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The control socket (`--api-socket PATH`): a Unix stream socket on which
//! a running VMM takes one request per connection, a line of text, and
//! answers with one line, `ok ...` or `error ...`:
//!
//! - `snapshot DIR [min-parked=N] [unacked=1]`: stop the vCPUs, save the
//!   VM into DIR (see `snapshot`), and end. With `min-parked=N`, first wait
//!   for a moment when at least N guest tasks are parked on asynchronous
//!   page faults, so that the snapshot is taken mid-storm; with
//!   `unacked=1`, also for one when a control block holds a PAGE_READY the
//!   guest has not ACKed yet. The VMM makes that moment by holding its
//!   userfaultfd fetches, or waits for it by pausing and resuming the vCPUs
//!   (at most [`MAX_PARK_TRIES`] times) when RAM is not behind one.
//! - `migrate SOCKET [min-parked=N]`: stop the vCPUs likewise, send the state
//!   to the `apf-vmm receive` listening on SOCKET, serve it guest RAM by
//!   post-copy (see `migrate`), and end once every page has arrived.
//!
//! `apf-vmm snapshot` and `apf-vmm migrate` are the clients. Nothing here
//! is KVM specific, so it is tested on any host.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use thiserror::Error;

/// How many times a `min-parked` request pauses the vCPUs looking for
/// faults in flight before it gives up.
pub const MAX_PARK_TRIES: u32 = 2000;
/// Longest request line accepted.
const MAX_LINE: usize = 4096;

/// What the VMM is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Save the VM into a directory and stop.
    Snapshot {
        /// Where the state and memory files go.
        dir: PathBuf,
        /// When to stop.
        at: StopAt,
    },
    /// Migrate by post-copy to a receiving VMM and stop.
    Migrate {
        /// The receiver's socket.
        to: PathBuf,
        /// When to stop.
        at: StopAt,
    },
}

/// The moment a request waits for before it stops the vCPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StopAt {
    /// Faults that must be in flight.
    pub min_parked: u32,
    /// A control block must hold an un-ACKed PAGE_READY.
    pub unacked: bool,
}

/// Control socket errors.
#[derive(Debug, Error)]
pub enum ControlError {
    /// A request that is not understood.
    #[error("bad request '{line}': {why}")]
    BadRequest {
        /// The line.
        line: String,
        /// What is wrong.
        why: &'static str,
    },
    /// The socket could not be created or used.
    #[error("control socket {path}: {source}")]
    Socket {
        /// Its path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The VMM answered with an error.
    #[error("the VMM refused: {0}")]
    Refused(String),
}

impl Request {
    /// Parses a request line.
    pub fn parse(line: &str) -> Result<Request, ControlError> {
        let bad = |why| ControlError::BadRequest {
            line: line.to_string(),
            why,
        };
        let mut words = line.split_whitespace();
        let verb = words.next().ok_or_else(|| bad("empty"))?;
        let target = words.next().ok_or_else(|| bad("no path"))?;
        let mut at = StopAt::default();
        for w in words {
            if let Some(n) = w.strip_prefix("min-parked=") {
                at.min_parked = n.parse().map_err(|_| bad("min-parked is not a number"))?;
            } else if let Some(n) = w.strip_prefix("unacked=") {
                at.unacked = match n {
                    "0" => false,
                    "1" => true,
                    _ => return Err(bad("unacked is 0 or 1")),
                };
            } else {
                return Err(bad("unknown parameter"));
            }
        }
        let path = PathBuf::from(target);
        match verb {
            "snapshot" => Ok(Request::Snapshot { dir: path, at }),
            "migrate" => Ok(Request::Migrate { to: path, at }),
            _ => Err(bad("unknown verb (snapshot or migrate)")),
        }
    }

    /// The request line (without its newline). Paths with white space or
    /// outside UTF-8 cannot be sent.
    pub fn line(&self) -> Result<String, ControlError> {
        let (verb, path, at) = match self {
            Request::Snapshot { dir, at } => ("snapshot", dir, at),
            Request::Migrate { to, at } => ("migrate", to, at),
        };
        let text = path
            .to_str()
            .filter(|t| !t.is_empty() && !t.contains(char::is_whitespace))
            .ok_or_else(|| ControlError::BadRequest {
                line: path.to_string_lossy().into_owned(),
                why: "the path must be UTF-8 without white space",
            })?;
        Ok(format!(
            "{verb} {text} min-parked={} unacked={}",
            at.min_parked,
            u8::from(at.unacked)
        ))
    }

    /// The moment the request waits for.
    pub fn stop_at(&self) -> StopAt {
        match self {
            Request::Snapshot { at, .. } | Request::Migrate { at, .. } => *at,
        }
    }
}

/// A request, and the connection its answer goes to.
///
/// The answer is written by whoever handles the request, before it goes
/// on: a VMM that saves its VM and exits has answered by then. Dropped
/// unanswered, it answers that the VMM is shutting down.
#[derive(Debug)]
pub struct Pending {
    /// The request.
    pub request: Request,
    stream: Option<UnixStream>,
}

impl Pending {
    /// Writes `answer` (`Ok` text or error text) to the client.
    pub fn answer(mut self, answer: Result<String, String>) {
        self.write(answer);
    }

    fn write(&mut self, answer: Result<String, String>) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        let text = match answer {
            Ok(t) => format!("ok {t}\n"),
            Err(t) => format!("error {t}\n"),
        };
        // A client that went away has nobody to tell.
        let _ = (&stream).write_all(text.as_bytes());
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.write(Err("the VMM is shutting down".into()));
    }
}

/// The socket's thread. It stops when the process exits; the socket file
/// is removed on drop.
pub struct ControlServer {
    path: PathBuf,
    _thread: JoinHandle<()>,
}

impl ControlServer {
    /// Binds `path` and hands each request to `deliver`, which passes it
    /// on to the VMM's main loop.
    pub fn start<F>(path: &Path, deliver: F) -> Result<ControlServer, ControlError>
    where
        F: Fn(Pending) + Send + 'static,
    {
        let sock_err = |source| ControlError::Socket {
            path: path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(sock_err)?;
        let thread = thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    serve(stream, &deliver);
                }
            })
            .map_err(sock_err)?;
        Ok(ControlServer {
            path: path.to_path_buf(),
            _thread: thread,
        })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve<F: Fn(Pending)>(stream: UnixStream, deliver: &F) {
    let mut line = String::new();
    let read = BufReader::new(&stream)
        .take(MAX_LINE as u64)
        .read_line(&mut line);
    let request = match read {
        Err(e) => Err(format!("reading the request: {e}")),
        Ok(_) => Request::parse(line.trim_end()).map_err(|e| e.to_string()),
    };
    let mut pending = Pending {
        request: Request::Snapshot {
            dir: PathBuf::new(),
            at: StopAt::default(),
        },
        stream: Some(stream),
    };
    match request {
        Ok(request) => {
            pending.request = request;
            deliver(pending);
        }
        Err(why) => pending.answer(Err(why)),
    }
}

/// Client side: sends `request` to the VMM at `socket` and waits up to
/// `timeout` for its answer. Returns the text after `ok`.
pub fn send(socket: &Path, request: &Request, timeout: Duration) -> Result<String, ControlError> {
    let sock_err = |source| ControlError::Socket {
        path: socket.to_path_buf(),
        source,
    };
    let line = request.line()?;
    let stream = UnixStream::connect(socket).map_err(sock_err)?;
    stream.set_read_timeout(Some(timeout)).map_err(sock_err)?;
    (&stream)
        .write_all(format!("{line}\n").as_bytes())
        .map_err(sock_err)?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .take(MAX_LINE as u64)
        .read_line(&mut answer)
        .map_err(sock_err)?;
    let answer = answer.trim_end();
    if let Some(rest) = answer.strip_prefix("ok") {
        Ok(rest.trim_start().to_string())
    } else if let Some(rest) = answer.strip_prefix("error") {
        Err(ControlError::Refused(rest.trim_start().to_string()))
    } else {
        Err(ControlError::Refused(format!(
            "unexpected answer '{answer}' (did the VMM exit?)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_print() {
        let r = Request::parse("snapshot /tmp/s min-parked=3 unacked=1").unwrap();
        assert_eq!(
            r,
            Request::Snapshot {
                dir: "/tmp/s".into(),
                at: StopAt {
                    min_parked: 3,
                    unacked: true
                }
            }
        );
        assert_eq!(Request::parse(&r.line().unwrap()).unwrap(), r);
        let m = Request::parse("migrate /run/dst.sock").unwrap();
        assert_eq!(m.stop_at(), StopAt::default());
        assert_eq!(
            m.line().unwrap(),
            "migrate /run/dst.sock min-parked=0 unacked=0"
        );
        for bad in [
            "",
            "snapshot",
            "resume /x",
            "snapshot /x min-parked=-1",
            "snapshot /x fast=1",
            "snapshot /x unacked=yes",
        ] {
            assert!(Request::parse(bad).is_err(), "{bad}");
        }
        let spaced = Request::Snapshot {
            dir: "/a b".into(),
            at: StopAt::default(),
        };
        assert!(spaced.line().is_err());
    }

    #[test]
    fn server_and_client() {
        let path = std::env::temp_dir().join(format!("apf-vmm-ctl-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let server = ControlServer::start(&path, |p: Pending| {
            let answer = match &p.request {
                Request::Snapshot { dir, .. } => Ok(format!("saved {}", dir.display())),
                Request::Migrate { .. } => Err("no receiver".to_string()),
            };
            p.answer(answer);
        })
        .unwrap();
        let t = Duration::from_secs(10);
        let snap = Request::Snapshot {
            dir: "/tmp/x".into(),
            at: StopAt {
                min_parked: 1,
                unacked: false,
            },
        };
        assert_eq!(send(&path, &snap, t).unwrap(), "saved /tmp/x");
        let mig = Request::Migrate {
            to: "/tmp/d".into(),
            at: StopAt::default(),
        };
        let e = send(&path, &mig, t).unwrap_err();
        assert!(
            matches!(&e, ControlError::Refused(m) if m == "no receiver"),
            "{e}"
        );

        // A malformed line gets an error answer, not a hang.
        let stream = UnixStream::connect(&path).unwrap();
        (&stream).write_all(b"launch /x\n").unwrap();
        let mut answer = String::new();
        BufReader::new(&stream).read_line(&mut answer).unwrap();
        assert!(
            answer.starts_with("error bad request 'launch /x'"),
            "{answer}"
        );

        drop(server);
        assert!(!path.exists());
        assert!(matches!(
            send(&path, &snap, t),
            Err(ControlError::Socket { .. })
        ));
    }
}
