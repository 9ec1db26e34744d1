//! The core with a fake chunked protocol: CSR chunks of many frames each, as the ASI TPX3
//! stream carries them (protocols.md §3.2–§3.4), read from memory instead of a socket.
//! Proves that a chunked sparse layout fits [`Protocol`] and [`StackLayout`]: chunks land
//! whole in pooled stack buffers, are accounted per frame, and a UDF (here the per-frame
//! sum) works on the CSR arrays directly.

use super::*;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use stemflow_core::pool::Pooled;
use stemflow_core::validity::FrameStatus;
use stemflow_core::{DType, SigShape};

const SIG: SigShape = SigShape::new(8, 8);

/// One chunk in a stack: where its CSR payload lies and which frames it holds.
#[derive(Clone, Copy, Debug, PartialEq)]
struct ChunkRef {
    offset: usize,
    len: usize,
    first_frame: u64,
    frames: u32,
}

/// What a TPX3 chunk decoder would know (§3.3): shapes and dtypes of the CSR arrays.
#[derive(Debug)]
struct CsrFormat {
    sig_shape: SigShape,
}

/// A stack of CSR chunks, the sparse counterpart of `RawStack`.
struct CsrStack {
    first_frame: u64,
    frames: u64,
    chunks: Vec<ChunkRef>,
    buf: Pooled<Vec<u8>>,
    format: Arc<CsrFormat>,
}

impl CsrStack {
    /// Per-frame sums straight from the CSR arrays (`indptr` u32, `indices` u32, `values`
    /// u16, little-endian, no padding): the kind of UDF that needs no dense frame.
    fn frame_sums(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for c in &self.chunks {
            let p = &self.buf[c.offset..c.offset + c.len];
            let n = c.frames as usize;
            let u32_at = |i: usize| u32::from_le_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
            let nnz = u32_at(4 * n) as usize;
            let values = 4 * (n + 1) + 4 * nnz;
            for row in 0..n {
                let (a, b) = (u32_at(4 * row) as usize, u32_at(4 * (row + 1)) as usize);
                let sum: u64 = (a..b)
                    .map(|k| {
                        u64::from(u16::from_le_bytes([
                            p[values + 2 * k],
                            p[values + 2 * k + 1],
                        ]))
                    })
                    .sum();
                out.push((c.first_frame + row as u64, sum));
            }
        }
        out
    }
}

struct CsrChunks;

impl StackLayout for CsrChunks {
    type Decoder = CsrFormat;
    type Entry = ChunkRef;
    type Stack = CsrStack;

    const ALIGN: usize = 8;

    fn entry(offset: usize, len: usize, first_frame: u64, frames: u32) -> ChunkRef {
        ChunkRef {
            offset,
            len,
            first_frame,
            frames,
        }
    }

    fn stack(filled: FilledStack<ChunkRef>, decoder: &Arc<CsrFormat>) -> CsrStack {
        CsrStack {
            first_frame: filled.first_frame,
            frames: filled.frames,
            chunks: filled.entries,
            buf: filled.buf,
            format: Arc::clone(decoder),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum FakeEnd {
    AllFrames,
    ScanEnd,
    Deadline,
    NewHeader,
    Stopped,
    Disconnected,
    Failed,
}

impl std::fmt::Display for FakeEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EndReasons for FakeEnd {
    const ALL_FRAMES: Self = Self::AllFrames;
    const INACTIVITY_DEADLINE: Self = Self::Deadline;
    const NEW_HEADER: Self = Self::NewHeader;
    const STOPPED: Self = Self::Stopped;
    const DISCONNECTED: Self = Self::Disconnected;
    const FAILED: Self = Self::Failed;
    const DISARMED: Option<Self> = None;

    fn as_str(self) -> &'static str {
        match self {
            Self::AllFrames => "all frames",
            Self::ScanEnd => "scan end",
            Self::Deadline => "inactivity deadline",
            Self::NewHeader => "new header",
            Self::Stopped => "stopped",
            Self::Disconnected => "disconnected",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("fake: {0}")]
struct FakeError(String);

/// A chunk message: frames `first..first + frames`, its CSR payload, and whether a check
/// fails on it.
struct Chunk {
    first: u64,
    frames: u32,
    payload: Vec<u8>,
    corrupt: bool,
}

enum Fake {
    /// A scan start announcing this many frames (§3.3 `nav_shape`).
    Start(u64),
    Chunk(Chunk),
    /// `ScanEnd` (§3.2).
    End,
}

/// The fake protocol: messages from a queue; the queue's end is a disconnect.
struct FakeCsr {
    msgs: VecDeque<Fake>,
    stop: Arc<AtomicBool>,
}

impl Protocol for FakeCsr {
    type Header = u64;
    type Frames = Chunk;
    type Error = FakeError;
    type End = FakeEnd;
    type Series = ();
    type Layout = CsrChunks;

    fn last_activity(&self) -> Instant {
        Instant::now()
    }

    fn pending(&self) -> Option<usize> {
        None
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn wait_header(&mut self, _deadline: Option<Instant>) -> Result<Option<u64>, FakeError> {
        loop {
            match self.msgs.pop_front() {
                Some(Fake::Start(n)) => return Ok(Some(n)),
                Some(_) => {}
                None => return Ok(None),
            }
        }
    }

    fn begin(&mut self, header: &u64) -> Result<Begin<()>, FakeError> {
        Ok(Begin {
            expected: *header,
            series: (),
        })
    }

    fn next(&mut self, _deadline: Instant) -> Result<Wait<Message<Self>>, FakeError> {
        Ok(match self.msgs.pop_front() {
            Some(Fake::Start(n)) => Wait::Ready(Message::Header(n)),
            Some(Fake::Chunk(c)) => Wait::Ready(Message::Frames(c)),
            Some(Fake::End) => Wait::Ready(Message::End(FakeEnd::ScanEnd)),
            None => Wait::Closed,
        })
    }

    fn frames(&mut self, c: Chunk, sink: &mut Sink<'_, Self>) -> Result<Flow, FakeError> {
        let n = u64::from(c.frames);
        sink.accept(c.first, n).map_err(|e| self.core_error(e))?;
        if !sink.has_format() {
            let format = Arc::new(CsrFormat { sig_shape: SIG });
            // The slot: the largest chunk the acquisition header allows (§3.4: "size slots
            // generously").
            sink.set_format(format, SIG, DType::U16, 4096)
                .map_err(|e| self.core_error(e))?;
        }
        if c.corrupt {
            sink.damaged(c.first, n);
            return Ok(Flow::Continue);
        }
        let Some(dst) = sink
            .reserve(c.first, c.payload.len())
            .map_err(|e| self.core_error(e))?
        else {
            return Ok(Flow::Stopped);
        };
        // A real protocol reads the socket into `dst` here.
        dst.copy_from_slice(&c.payload);
        sink.commit(c.first, c.frames)
            .map_err(|e| self.core_error(e))?;
        Ok(Flow::Continue)
    }

    fn core_error(&self, error: CoreError) -> FakeError {
        FakeError(error.to_string())
    }
}

/// A CSR chunk of `rows` frames starting at `first`; frame `i` has `i % 3 + 1` events of
/// value `i + 1` each.
fn chunk(first: u64, rows: u32) -> Chunk {
    let mut indptr = vec![0u32];
    let (mut indices, mut values) = (Vec::new(), Vec::new());
    for r in 0..u64::from(rows) {
        let i = first + r;
        for k in 0..(i % 3 + 1) {
            indices.push(((i * 7 + k * 5) % 64) as u32);
            values.push((i + 1) as u16);
        }
        indptr.push(indices.len() as u32);
    }
    let mut payload = Vec::new();
    for v in indptr.iter().chain(&indices) {
        payload.extend_from_slice(&v.to_le_bytes());
    }
    for v in &values {
        payload.extend_from_slice(&v.to_le_bytes());
    }
    Chunk {
        first,
        frames: rows,
        payload,
        corrupt: false,
    }
}

fn expected_sum(i: u64) -> u64 {
    (i % 3 + 1) * (i + 1)
}

struct Outcome {
    events: Vec<String>,
    stacks: Vec<CsrStack>,
    summaries: Vec<AcquisitionSummary<FakeEnd>>,
    error: Option<String>,
}

fn run(msgs: Vec<Fake>) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let settings = Settings {
        device: "fake csr".into(),
        header_timeout: Some(Duration::from_secs(1)),
        first_frame_timeout: Duration::from_secs(1),
        frame_timeout: Duration::from_secs(1),
        frames_per_stack: 4,
        pool_stacks: 4,
        memory_budget: super::DEFAULT_MEMORY_BUDGET,
    };
    let protocol = FakeCsr {
        msgs: msgs.into(),
        stop: Arc::clone(&stop),
    };
    let conn = Connection::spawn(settings, protocol, stop, "fake-rx").expect("spawns");
    let mut out = Outcome {
        events: Vec::new(),
        stacks: Vec::new(),
        summaries: Vec::new(),
        error: None,
    };
    let mut channels = Vec::new();
    while let Ok(ev) = conn.events().recv_timeout(Duration::from_secs(5)) {
        match ev {
            ReceiverEvent::Armed { stacks, .. } => {
                out.events.push("armed".into());
                channels.push(stacks);
            }
            ReceiverEvent::FirstFrame { sig_shape, .. } => {
                assert_eq!(sig_shape, SIG);
                out.events.push("first frame".into());
            }
            ReceiverEvent::Finished { summary, .. } => {
                out.events.push(format!("finished: {}", summary.end));
                out.summaries.push(summary);
            }
            ReceiverEvent::Error { error, summary } => {
                out.events.push("error".into());
                out.error = Some(error.to_string());
                out.summaries.extend(summary);
            }
        }
    }
    for ch in channels {
        out.stacks.extend(ch.try_iter());
    }
    conn.join();
    out
}

/// Chunks of several frames each are written whole into pooled stacks (a gap or a damaged
/// chunk closes the stack), accounted per frame, and summed from CSR without densifying.
#[test]
fn chunked_sparse_protocol_is_accounted_per_frame() {
    let mut bad = chunk(4, 2);
    bad.corrupt = true;
    let msgs = vec![
        Fake::Start(12),
        chunk(0, 3).into(),
        chunk(3, 1).into(),
        Fake::Chunk(bad),
        // Frame 6 never arrives.
        chunk(7, 3).into(),
        chunk(10, 2).into(),
    ];
    let out = run(msgs);
    assert_eq!(out.events, ["armed", "first frame", "finished: all frames"]);
    let stacks: Vec<(u64, u64, usize)> = out
        .stacks
        .iter()
        .map(|s| (s.first_frame, s.frames, s.chunks.len()))
        .collect();
    assert_eq!(
        stacks,
        [(0, 4, 2), (7, 5, 2)],
        "stacks of consecutive chunks"
    );
    assert!(out.stacks.iter().all(|s| s.format.sig_shape == SIG));
    assert!(
        out.stacks
            .iter()
            .flat_map(|s| &s.chunks)
            .all(|c| c.offset % 8 == 0),
        "chunks start 8-byte aligned"
    );
    let sums: Vec<(u64, u64)> = out.stacks.iter().flat_map(CsrStack::frame_sums).collect();
    let want: Vec<(u64, u64)> = [0, 1, 2, 3, 7, 8, 9, 10, 11]
        .into_iter()
        .map(|i| (i, expected_sum(i)))
        .collect();
    assert_eq!(sums, want);
    let s = &out.summaries[0];
    assert_eq!(
        (s.expected, s.received, s.damaged, s.lost, s.end),
        (12, 9, 2, 1, FakeEnd::AllFrames)
    );
    assert_eq!(s.validity.codes(), &[1, 1, 1, 1, 2, 2, 0, 1, 1, 1, 1, 1]);
    assert_eq!(s.validity.status(6), FrameStatus::Missing);
}

/// A chunk reaching past the announced frame count ends the acquisition with an error
/// naming both indices; what arrived before is delivered and counted. An end marker ends a
/// later acquisition early with the protocol's reason.
#[test]
fn chunk_past_the_end_fails_and_end_marker_ends_early() {
    let out = run(vec![Fake::Start(4), chunk(0, 2).into(), chunk(2, 3).into()]);
    assert_eq!(out.events, ["armed", "first frame", "error"]);
    let e = out.error.unwrap();
    assert!(e.contains("expected frame 2, observed frame 2"), "{e}");
    let s = &out.summaries[0];
    assert_eq!((s.received, s.lost, s.end), (2, 2, FakeEnd::Failed));
    assert_eq!(out.stacks.len(), 1);

    let out = run(vec![Fake::Start(8), chunk(0, 2).into(), Fake::End]);
    let s = &out.summaries[0];
    assert_eq!((s.received, s.lost, s.end), (2, 6, FakeEnd::ScanEnd));
}

impl From<Chunk> for Fake {
    fn from(c: Chunk) -> Self {
        Fake::Chunk(c)
    }
}
