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

/// Reads of at least this many bytes raise the socket's low-water mark (see
/// `DataStream::set_low_water`).
const MIN_LOW_WATER: usize = 16 * 1024;
/// The highest low-water mark set, bytes.
const MAX_LOW_WATER: usize = 1 << 20;

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
    /// The socket's receive low-water mark now set, bytes (1: the kernel's default).
    low_water: usize,
}

impl DataStream {
    /// Wraps a connected socket; sets its read timeout to [`POLL`].
    pub(crate) fn new(stream: TcpStream, stop: Arc<AtomicBool>) -> io::Result<Self> {
        stream.set_read_timeout(Some(POLL))?;
        Ok(Self {
            stream,
            stop,
            last_activity: Instant::now(),
            low_water: 1,
        })
    }

    /// Bytes received and not yet read; `None` when unknown.
    pub(crate) fn pending(&self) -> Option<usize> {
        crate::net::pending_bytes(&self.stream)
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
            self.set_low_water(buf.len() - got);
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

    /// Lets a blocked read wake only once `want` bytes are there (capped at
    /// [`MAX_LOW_WATER`]), or 1 byte for small reads. Without it, each arriving segment wakes
    /// the reader for a few kilobytes, which costs more than the copy on a VM. Never above
    /// what the read asks for: bytes fewer than the mark would not wake it at all.
    fn set_low_water(&mut self, want: usize) {
        let mark = if want >= MIN_LOW_WATER {
            want.min(MAX_LOW_WATER)
        } else {
            1
        };
        if mark == self.low_water {
            return;
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let value = mark as libc::c_int;
            // SAFETY: a valid socket descriptor and a c_int option of the stated size.
            let rc = unsafe {
                libc::setsockopt(
                    self.stream.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVLOWAT,
                    (&value as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            // A refused hint only costs wake-ups; reads stay correct either way.
            if rc == 0 {
                self.low_water = mark;
            }
        }
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
        // Whatever trickles in must wake the read, or the silence would be misjudged.
        self.set_low_water(1);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    /// A connected pair on loopback: our reading side and the peer's writing side.
    fn pair() -> (DataStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let peer = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let (ours, _) = listener.accept().expect("accept");
        let stream = DataStream::new(ours, Arc::new(AtomicBool::new(false))).expect("wrap");
        (stream, peer)
    }

    /// A large read whose bytes arrive in pieces, each below the low-water mark, with
    /// pauses longer than the poll: every byte lands, in order, and the fill completes.
    #[test]
    fn large_read_completes_from_pieces_below_the_low_water_mark() {
        let (mut s, mut peer) = pair();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            for piece in sent.chunks(30_000) {
                peer.write_all(piece).expect("write");
                std::thread::sleep(Duration::from_millis(25));
            }
            peer
        });
        let mut buf = vec![0u8; data.len()];
        let fill = s
            .fill(
                &mut buf,
                Some(Instant::now() + Duration::from_secs(5)),
                Duration::from_secs(5),
            )
            .expect("fill");
        let _peer = writer.join().expect("writer");
        assert_eq!(fill, Fill::Done);
        assert_eq!(buf, data);
        assert!(s.low_water > 1, "a 200 kB read raised the mark");
    }

    /// Fewer bytes than asked for, then silence: the fill times out on inactivity and
    /// reports every byte it got (none is held back by the mark); a small read afterwards
    /// lowers the mark again and wakes for a single byte.
    #[test]
    fn short_data_times_out_with_its_bytes_and_small_reads_still_wake() {
        let (mut s, mut peer) = pair();
        peer.write_all(&[7u8; 40_000]).expect("write");
        let mut buf = vec![0u8; 100_000];
        let t = Instant::now();
        let fill = s
            .fill(&mut buf, None, Duration::from_millis(100))
            .expect("fill");
        assert_eq!(fill, Fill::TimedOut(40_000));
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "no hang: {:?}",
            t.elapsed()
        );
        assert!(buf[..40_000].iter().all(|&b| b == 7));
        peer.write_all(&[9u8]).expect("write");
        let mut one = [0u8; 1];
        let fill = s
            .fill(
                &mut one,
                Some(Instant::now() + Duration::from_secs(2)),
                Duration::from_secs(2),
            )
            .expect("fill");
        assert_eq!((fill, one[0], s.low_water), (Fill::Done, 9, 1));
    }
}
