//! Exact reads from the data socket with deadlines and a stop flag, without ever losing the
//! stream position.
//!
//! The socket has a short read timeout ([`POLL`]) so that a blocked read wakes up to look at
//! the stop flag and the deadline; bytes read before a timeout stay in the caller's buffer
//! and the next read continues after them. Two deadlines apply to one call: before its first
//! byte, the one the caller gives (header wait, first frame, inactivity between frames);
//! once bytes flow, an inactivity deadline counted from the last byte received.

use std::io::{self, Read};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often a blocked read wakes to check the stop flag and its deadline; bounds the
/// reaction time to [`stop`](super::receiver::MerlinReceiver::stop).
pub(crate) const POLL: Duration = Duration::from_millis(10);

/// How a fill ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fill {
    /// The buffer is full.
    Done,
    /// The peer closed the connection after this many bytes of the buffer.
    Eof(usize),
    /// The deadline passed after this many bytes.
    TimedOut(usize),
    /// Stop was requested after this many bytes.
    Stopped(usize),
}

/// The data socket as the receiver reads it.
#[derive(Debug)]
pub(crate) struct DataStream {
    stream: TcpStream,
    stop: Arc<AtomicBool>,
    /// When the last byte arrived (or the stream was opened).
    last_activity: Instant,
}

impl DataStream {
    /// Wraps a connected socket; sets its read timeout to [`POLL`].
    pub(crate) fn new(stream: TcpStream, stop: Arc<AtomicBool>) -> io::Result<Self> {
        stream.set_read_timeout(Some(POLL))?;
        Ok(Self {
            stream,
            stop,
            last_activity: Instant::now(),
        })
    }

    /// When the last byte arrived.
    pub(crate) fn last_activity(&self) -> Instant {
        self.last_activity
    }

    /// True once stop was requested.
    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Fills `buf`. Before its first byte the call fails at `deadline` (`None`: waits until
    /// stop or EOF); after it, when no byte arrives for `idle`.
    pub(crate) fn fill(
        &mut self,
        buf: &mut [u8],
        deadline: Option<Instant>,
        idle: Duration,
    ) -> io::Result<Fill> {
        let mut got = 0;
        while got < buf.len() {
            if self.stopped() {
                return Ok(Fill::Stopped(got));
            }
            match self.stream.read(&mut buf[got..]) {
                Ok(0) => return Ok(Fill::Eof(got)),
                Ok(n) => {
                    got += n;
                    self.last_activity = Instant::now();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    let limit = if got == 0 {
                        deadline
                    } else {
                        Some(self.last_activity + idle)
                    };
                    if limit.is_some_and(|l| Instant::now() >= l) {
                        return Ok(Fill::TimedOut(got));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Fill::Done)
    }

    /// Fills `buf` as the continuation of a message under way: fails when no byte arrives
    /// for `idle`, counted from the last byte received.
    pub(crate) fn fill_more(&mut self, buf: &mut [u8], idle: Duration) -> io::Result<Fill> {
        let deadline = self.last_activity + idle;
        self.fill(buf, Some(deadline), idle)
    }

    /// Reads and discards `n` bytes of a message under way (e.g. a stale frame), through
    /// `scratch`. Returns how the last fill ended and the bytes discarded.
    pub(crate) fn skip(
        &mut self,
        mut n: usize,
        scratch: &mut [u8],
        idle: Duration,
    ) -> io::Result<(Fill, usize)> {
        let mut skipped = 0;
        while n > 0 {
            let k = n.min(scratch.len());
            match self.fill_more(&mut scratch[..k], idle)? {
                Fill::Done => {
                    skipped += k;
                    n -= k;
                }
                Fill::Eof(g) => return Ok((Fill::Eof(g), skipped + g)),
                Fill::TimedOut(g) => return Ok((Fill::TimedOut(g), skipped + g)),
                Fill::Stopped(g) => return Ok((Fill::Stopped(g), skipped + g)),
            }
        }
        Ok((Fill::Done, skipped))
    }

    /// Reads and discards whatever arrives until `silence` passes without a byte, or until
    /// `deadline`, or stop. Returns the bytes discarded and whether the silence was reached
    /// (`false`: data kept coming until the deadline).
    pub(crate) fn drain(
        &mut self,
        silence: Duration,
        deadline: Instant,
    ) -> io::Result<(u64, bool)> {
        let mut scratch = vec![0u8; 64 * 1024];
        let mut drained = 0u64;
        let mut quiet_since = Instant::now();
        loop {
            let now = Instant::now();
            if self.stopped() || now.duration_since(quiet_since) >= silence {
                return Ok((drained, true));
            }
            if now >= deadline {
                return Ok((drained, false));
            }
            match self.stream.read(&mut scratch) {
                // A closed peer is silent for good; the header wait reports the closure.
                Ok(0) => return Ok((drained, true)),
                Ok(n) => {
                    drained += n as u64;
                    quiet_since = Instant::now();
                    self.last_activity = quiet_since;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
