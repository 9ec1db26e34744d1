//! The terminal view of a run: a progress bar (frames, frames/s, MB/s, lost frames) and one
//! line per state change for an acquisition ([`show`]); a progress bar (frames, GB/s, ETA)
//! for work on frames that the caller counts, such as `stemflow process`
//! ([`FrameProgress`]). Without a terminal on stderr (a log file, a pipe, a service), both
//! write a plain progress line every [`PROGRESS_LINE_INTERVAL`] instead (nothing for work
//! that ends sooner). Also the stop signals (Ctrl-C, SIGTERM, SIGHUP) and what a cancelled
//! command returns ([`Cancelled`]).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressState, ProgressStyle};
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};
use stemflow_actors::orchestrator::{InstrumentStatus, StateChange};
use stemflow_core::state::AcqState;
use tokio::sync::{broadcast, watch};

/// Time between two progress lines when stderr is not a terminal (unless
/// [`PROGRESS_INTERVAL_ENV`] sets another).
pub const PROGRESS_LINE_INTERVAL: Duration = Duration::from_secs(5);

/// Environment variable with the seconds between two progress lines when stderr is not a
/// terminal (a number > 0, e.g. `0.5`; default [`PROGRESS_LINE_INTERVAL`]).
pub const PROGRESS_INTERVAL_ENV: &str = "STEMFLOW_PROGRESS_INTERVAL_S";

/// The time between two progress lines: [`PROGRESS_INTERVAL_ENV`] when it holds a number
/// of seconds > 0 (else a warning and the default), or [`PROGRESS_LINE_INTERVAL`].
pub fn line_interval() -> Duration {
    let Ok(text) = std::env::var(PROGRESS_INTERVAL_ENV) else {
        return PROGRESS_LINE_INTERVAL;
    };
    match text.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s < 1e6 => Duration::from_secs_f64(s),
        _ => {
            tracing::warn!(
                "{PROGRESS_INTERVAL_ENV}={text:?} is not a number of seconds > 0; using {} s",
                PROGRESS_LINE_INTERVAL.as_secs()
            );
            PROGRESS_LINE_INTERVAL
        }
    }
}

/// One progress line, e.g. `processing: 8192/16384 frames (50 %), 1.52 GB/s, ETA 6 s`: the
/// frames done of `total` (0: unknown, no percentage and no ETA), the data rate of
/// `frames_per_s` frames of `bytes_per_frame` bytes, and the time left at that rate.
pub fn progress_line(
    what: &str,
    done: u64,
    total: u64,
    frames_per_s: f64,
    bytes_per_frame: u64,
) -> String {
    let gb_per_s = frames_per_s * bytes_per_frame as f64 / 1e9;
    let mut line = if total > 0 {
        let pct = 100.0 * done as f64 / total as f64;
        format!("{what}: {done}/{total} frames ({pct:.0} %), {gb_per_s:.2} GB/s")
    } else {
        format!("{what}: {done} frames, {gb_per_s:.2} GB/s")
    };
    if total > done && frames_per_s > 0.0 {
        let left = (total - done) as f64 / frames_per_s;
        line.push_str(&format!(", ETA {}", duration_text(left)));
    }
    line
}

/// `s` seconds as `7 s`, `2 min 5 s`, `1 h 3 min`.
fn duration_text(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// How [`FrameProgress`] shows itself.
enum View {
    /// An indicatif bar on the terminal.
    Bar(ProgressBar),
    /// A line on stderr every `interval`, the next one at `next`.
    Lines {
        /// Time between two lines.
        interval: Duration,
        /// When the next line is due.
        next: Instant,
    },
}

/// The progress of work on a known number of frames (`stemflow process`), on stderr: on a
/// terminal a bar with frames done, GB/s and the time left; otherwise a plain line every
/// [`line_interval`] ([`progress_line`]), and nothing for work done sooner. The caller
/// reports the frames done ([`FrameProgress::update`]); the bar is cleared when this is
/// finished or dropped.
pub struct FrameProgress {
    /// Names the work in the lines (`processing`).
    what: &'static str,
    /// Frames the work is to do.
    total: u64,
    /// Bytes of one frame, for the data rate.
    bytes_per_frame: u64,
    /// When the work started (for the rate of the lines).
    start: Instant,
    /// Bar or lines.
    view: View,
}

impl FrameProgress {
    /// The progress of `what` on `total` frames of `bytes_per_frame` bytes: a bar when
    /// stderr is a terminal, else lines every [`line_interval`].
    pub fn new(what: &'static str, total: u64, bytes_per_frame: u64) -> Self {
        if std::io::stderr().is_terminal() {
            Self::bar(what, total, bytes_per_frame)
        } else {
            Self::lines(what, total, bytes_per_frame, line_interval())
        }
    }

    /// A bar on stderr (hidden by indicatif where stderr is not a terminal).
    pub fn bar(what: &'static str, total: u64, bytes_per_frame: u64) -> Self {
        let bar =
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(10))
                .with_finish(ProgressFinish::AndClear);
        let bpf = bytes_per_frame as f64;
        let gb_per_s = move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.2} GB/s", state.per_sec() * bpf / 1e9);
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} frames  {gb_per_s}  ETA {eta}",
            )
            .map(|s| s.with_key("gb_per_s", gb_per_s))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(what);
        Self {
            what,
            total,
            bytes_per_frame,
            start: Instant::now(),
            view: View::Bar(bar),
        }
    }

    /// Plain lines on stderr, the first after `interval`, then every `interval`.
    pub fn lines(what: &'static str, total: u64, bytes_per_frame: u64, interval: Duration) -> Self {
        let start = Instant::now();
        Self {
            what,
            total,
            bytes_per_frame,
            start,
            view: View::Lines {
                interval,
                next: start + interval,
            },
        }
    }

    /// `done` frames are done: moves the bar, or writes a line when one is due.
    pub fn update(&mut self, done: u64) {
        match &mut self.view {
            View::Bar(bar) => bar.set_position(done),
            View::Lines { interval, next } => {
                let now = Instant::now();
                if now < *next {
                    return;
                }
                // The next line one interval from now: a late update does not bunch lines.
                *next = now + *interval;
                let elapsed = now.duration_since(self.start).as_secs_f64();
                let rate = if elapsed > 0.0 {
                    done as f64 / elapsed
                } else {
                    0.0
                };
                say(&progress_line(
                    self.what,
                    done,
                    self.total,
                    rate,
                    self.bytes_per_frame,
                ));
            }
        }
    }

    /// The work ended: the bar is cleared (lines need nothing).
    pub fn finish(self) {
        if let View::Bar(bar) = &self.view {
            bar.finish_and_clear();
        }
    }
}

/// The progress of a live acquisition on stderr, from the instrument's status: a bar
/// (frames, frames/s, MB/s, lost frames) on a terminal, else a line every
/// [`line_interval`] (`acquisition: 1234/4096 frames (30 %), 0.53 GB/s, ETA 4 s, 0 lost`).
/// Cleared when dropped.
struct AcquisitionView {
    /// The bar (hidden by indicatif where stderr is not a terminal).
    bar: ProgressBar,
    /// Time between two lines without a terminal.
    interval: Duration,
    /// When the next line is due.
    next_line: Instant,
    /// When the first frame was seen, and the frames then (for the rates).
    first_frame_at: Option<(Instant, u64)>,
}

impl AcquisitionView {
    fn new() -> Self {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(10))
            .with_finish(ProgressFinish::AndClear);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} frames  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let interval = line_interval();
        Self {
            bar,
            interval,
            next_line: Instant::now() + interval,
            first_frame_at: None,
        }
    }

    /// Shows `s`: moves the bar, or writes a line when one is due.
    fn show(&mut self, s: &InstrumentStatus) {
        let bar = &self.bar;
        bar.set_length(s.frames_expected);
        bar.set_position(
            s.frames_processed
                .min(s.frames_expected.max(s.frames_processed)),
        );
        if s.frames_processed > 0 && self.first_frame_at.is_none() {
            self.first_frame_at = Some((Instant::now(), s.frames_processed));
        }
        let (fps, mbs) = match self.first_frame_at {
            Some((t, n0)) if t.elapsed().as_secs_f64() > 0.05 => {
                let dt = t.elapsed().as_secs_f64();
                let fps = s.frames_processed.saturating_sub(n0) as f64 / dt;
                (fps, fps * s.bytes_per_frame as f64 / 1e6)
            }
            _ => (0.0, 0.0),
        };
        let lost = s.frames_lost;
        bar.set_message(format!("{fps:>8.0} frames/s  {mbs:>8.1} MB/s  lost {lost}"));
        if bar.is_hidden() && Instant::now() >= self.next_line {
            self.next_line = Instant::now() + self.interval;
            let line = progress_line(
                "acquisition",
                s.frames_processed,
                s.frames_expected,
                fps,
                s.bytes_per_frame,
            );
            say(&format!("{line}, {lost} lost"));
        }
    }

    /// Writes `line` above the bar (a plain line without a terminal).
    fn println(&self, line: String) {
        // Without a terminal the bar is hidden and so are its lines.
        if self.bar.is_hidden() {
            say(&line);
        } else {
            self.bar.println(line);
        }
    }
}

/// Shows progress until the state returns to Idle after Running (or the sender closes).
/// Without a terminal, the state changes are plain lines and the progress a line every
/// [`line_interval`].
pub async fn show(
    mut status: watch::Receiver<InstrumentStatus>,
    mut changes: broadcast::Receiver<StateChange>,
) {
    let mut view = AcquisitionView::new();
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            ch = changes.recv() => match ch {
                Ok(c) => {
                    view.println(format!(
                        "[{:>7.3} s] state {} --{:?}--> {}",
                        t0.elapsed().as_secs_f64(), c.from, c.event, c.to
                    ));
                    if c.to == AcqState::Idle && c.from != AcqState::Idle {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = tick.tick() => {
                let s = status.borrow_and_update().clone();
                view.show(&s);
            }
        }
    }
}

/// The progress of the acquisitions of a sequence (`stemflow run`, `queue`) as [`show`]
/// draws it, without the state changes: until the status sender closes, or until the task
/// is aborted (the bar is then cleared).
pub async fn show_frames(mut status: watch::Receiver<InstrumentStatus>) {
    let mut view = AcquisitionView::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        if status.has_changed().is_err() {
            break;
        }
        let s = status.borrow_and_update().clone();
        view.show(&s);
    }
}

/// A signal that asks stemflow to stop: each ends the running work the way Ctrl-C does
/// (acquisition cancelled through the orchestrator, scan stopped, detector disarmed,
/// results so far and the recording finished and marked `cancelled`), and the process
/// exits with 128 + the signal's number, the shell's convention.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGINT: Ctrl-C at the terminal.
    Interrupt,
    /// SIGTERM: systemd stopping a service, `docker stop`, `kill`.
    Terminate,
    /// SIGHUP: the terminal went away (a lost ssh session).
    Hangup,
}

impl StopSignal {
    /// The exit status of a command this signal stopped: 130, 143 or 129.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Interrupt => CANCELLED_EXIT_CODE,
            Self::Terminate => 128 + 15,
            Self::Hangup => 128 + 1,
        }
    }

    /// How messages name it: `Ctrl-C`, `SIGTERM`, `SIGHUP`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Interrupt => "Ctrl-C",
            Self::Terminate => "SIGTERM",
            Self::Hangup => "SIGHUP",
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::Interrupt => 1,
            Self::Terminate => 2,
            Self::Hangup => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Interrupt),
            2 => Some(Self::Terminate),
            3 => Some(Self::Hangup),
            _ => None,
        }
    }

    /// The first stop signal this process received, if any.
    pub fn received() -> Option<Self> {
        Self::from_code(FIRST_SIGNAL.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// The first stop signal received ([`StopSignal::code`]; 0: none), for the exit status.
static FIRST_SIGNAL: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// The error of a command the user cancelled (Ctrl-C, SIGTERM, SIGHUP) after its results
/// were written; the process then exits with [`Cancelled::exit_code`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled {
    /// Frames processed (or received) before the run ended, and frames the run was to
    /// process (the scan's positions); `None` where no single run was cut short (a queue).
    pub frames: Option<(u64, u64)>,
    /// The signal that stopped the run.
    pub signal: StopSignal,
}

impl Cancelled {
    /// A run cancelled after `done` of `expected` frames, by the first stop signal received
    /// (Ctrl-C when none was: a cancel through the API).
    pub fn after(done: u64, expected: u64) -> Self {
        Self::with_frames(Some((done, expected)))
    }

    /// A run cancelled by the first stop signal received, after `frames` (done, expected)
    /// where a single run was cut short.
    pub fn with_frames(frames: Option<(u64, u64)>) -> Self {
        Self {
            frames,
            signal: StopSignal::received().unwrap_or(StopSignal::Interrupt),
        }
    }

    /// The process's exit status: 128 + the signal's number (130 for Ctrl-C).
    pub fn exit_code(&self) -> u8 {
        self.signal.exit_code()
    }
}

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.signal {
            StopSignal::Interrupt => write!(f, "cancelled by the user")?,
            s => write!(f, "cancelled by {}", s.name())?,
        }
        if let Some((done, expected)) = self.frames {
            write!(f, " after {done} of {expected} frames")?;
        }
        Ok(())
    }
}

impl std::error::Error for Cancelled {}

/// Exit status of a command cancelled by Ctrl-C: 128 + SIGINT, the shell's convention.
pub const CANCELLED_EXIT_CODE: u8 = 130;

/// Writes one line to stderr, ignoring a closed or lost terminal (a hang-up must not turn
/// into a panic while the outputs are being finished).
fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Ctrl-C (SIGINT), SIGTERM and SIGHUP for the lifetime of the process: the first one
/// sets the flag, runs `on_first` (e.g. cancels the running acquisition) and says
/// `Ctrl-C: {doing}` (or `SIGTERM: …`) on stderr (e.g. `cancelling the run`); a second one
/// exits at once with its exit status, without writing anything.
///
/// A SIGHUP while stdout or stderr is a terminal means the terminal is gone: both are
/// pointed at `/dev/null` first, so that the messages written while the outputs are
/// finished cannot fail.
///
/// The handlers are installed before this returns (a signal from then on is caught), on a
/// thread of its own with a small tokio runtime, so that blocking commands need no
/// runtime of their own.
///
/// # Errors
/// The thread or the signal handlers could not be set up.
pub fn on_ctrl_c(
    doing: &'static str,
    on_first: impl FnOnce() + Send + 'static,
) -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let flag = Arc::new(AtomicBool::new(false));
    let set = Arc::clone(&flag);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    std::thread::Builder::new()
        .name("stemflow-signals".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(async move {
                let mut signals = match Signals::new() {
                    Ok(i) => i,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let Some(first) = signals.next().await else {
                    return;
                };
                // Only the first signal of the process counts for the exit status.
                let _ = FIRST_SIGNAL.compare_exchange(
                    0,
                    first.code(),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
                if first == StopSignal::Hangup {
                    detach_from_lost_terminal();
                }
                set.store(true, Ordering::SeqCst);
                say(&format!(
                    "stemflow: {}: {doing} ({} again to quit at once)",
                    first.name(),
                    first.name()
                ));
                on_first();
                if let Some(second) = signals.next().await {
                    say(&format!(
                        "stemflow: {} again: quitting without finishing the outputs",
                        second.name()
                    ));
                    std::process::exit(i32::from(first.exit_code()));
                }
            });
        })
        .map_err(|e| anyhow::anyhow!("starting the signal handler thread: {e}"))?;
    match ready_rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(())) => Ok(flag),
        Ok(Err(e)) => anyhow::bail!("installing the signal handlers: {e}"),
        Err(_) => anyhow::bail!("installing the signal handlers: no answer within 5 s"),
    }
}

/// After a hang-up, points stdout and stderr at `/dev/null` where they were a terminal:
/// writes to a terminal whose session is gone fail (EIO), and Rust's `println!` panics on
/// a failed write. Pipes and files are left alone (their reader may still be there).
#[cfg(unix)]
fn detach_from_lost_terminal() {
    use std::io::IsTerminal as _;
    use std::os::fd::AsRawFd as _;
    let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") else {
        return;
    };
    for fd in [
        (
            std::io::stdout().is_terminal(),
            std::io::stdout().as_raw_fd(),
        ),
        (
            std::io::stderr().is_terminal(),
            std::io::stderr().as_raw_fd(),
        ),
    ]
    .into_iter()
    .filter_map(|(tty, fd)| tty.then_some(fd))
    {
        // SAFETY: dup2(2) on two file descriptors this process owns (`null` stays open for
        // the call; the target is stdout or stderr); it touches no memory of ours.
        unsafe {
            libc::dup2(null.as_raw_fd(), fd);
        }
    }
}

#[cfg(not(unix))]
fn detach_from_lost_terminal() {}

/// SIGINT, SIGTERM and SIGHUP as one stream: registered when created (unix), so none is
/// missed after that.
#[cfg(unix)]
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The next stop signal; `None` when the streams ended (the runtime is shutting down).
    async fn next(&mut self) -> Option<StopSignal> {
        tokio::select! {
            r = self.interrupt.recv() => r.map(|()| StopSignal::Interrupt),
            r = self.terminate.recv() => r.map(|()| StopSignal::Terminate),
            r = self.hangup.recv() => r.map(|()| StopSignal::Hangup),
        }
    }
}

/// Ctrl-C as a stream (registered on the first wait).
#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self)
    }
    async fn next(&mut self) -> Option<StopSignal> {
        tokio::signal::ctrl_c()
            .await
            .ok()
            .map(|()| StopSignal::Interrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_progress_line_has_frames_rate_and_time_left() {
        // 1000 of 4000 frames of 128 KiB at 10 000 frames/s: 1.31 GB/s, 0.3 s left.
        assert_eq!(
            progress_line("processing", 1000, 4000, 10_000.0, 131_072),
            "processing: 1000/4000 frames (25 %), 1.31 GB/s, ETA 0 s"
        );
        assert_eq!(
            progress_line("processing", 4000, 4000, 100.0, 1_000_000),
            "processing: 4000/4000 frames (100 %), 0.10 GB/s"
        );
        assert_eq!(
            progress_line("acquisition", 7, 0, 0.0, 10),
            "acquisition: 7 frames, 0.00 GB/s"
        );
        assert_eq!(duration_text(59.4), "59 s");
        assert_eq!(duration_text(125.0), "2 min 5 s");
        assert_eq!(duration_text(3780.0), "1 h 3 min");
    }

    #[test]
    fn lines_come_only_once_the_interval_has_passed() {
        let mut p = FrameProgress::lines("processing", 100, 10, Duration::from_secs(3600));
        p.update(50);
        let View::Lines { next, .. } = p.view else {
            panic!("not lines")
        };
        // No line yet: the next one is still an interval away.
        assert!(next > Instant::now() + Duration::from_secs(3000));
        p.finish();
    }
}
