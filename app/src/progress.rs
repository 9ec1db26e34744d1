//! The terminal view of a run: a progress bar (frames, frames/s, MB/s, lost frames) and one
//! line per state change.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::time::{Duration, Instant};
use stemflow_actors::orchestrator::{InstrumentStatus, StateChange};
use stemflow_core::state::AcqState;
use tokio::sync::{broadcast, watch};

/// Shows progress until the state returns to Idle after Running (or the sender closes).
pub async fn show(
    mut status: watch::Receiver<InstrumentStatus>,
    mut changes: broadcast::Receiver<StateChange>,
) {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(10));
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} frames  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let t0 = Instant::now();
    let mut first_frame_at: Option<(Instant, u64)> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            ch = changes.recv() => match ch {
                Ok(c) => {
                    let line = format!(
                        "[{:>7.3} s] state {} --{:?}--> {}",
                        t0.elapsed().as_secs_f64(), c.from, c.event, c.to
                    );
                    // Without a terminal the bar is hidden and so are its lines.
                    if bar.is_hidden() {
                        eprintln!("{line}");
                    } else {
                        bar.println(line);
                    }
                    if c.to == AcqState::Idle && c.from != AcqState::Idle {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = tick.tick() => {
                let s = status.borrow_and_update().clone();
                bar.set_length(s.frames_expected);
                bar.set_position(s.frames_processed.min(s.frames_expected.max(s.frames_processed)));
                if s.frames_processed > 0 && first_frame_at.is_none() {
                    first_frame_at = Some((Instant::now(), s.frames_processed));
                }
                let (fps, mbs) = match first_frame_at {
                    Some((t, n0)) if t.elapsed().as_secs_f64() > 0.05 => {
                        let dt = t.elapsed().as_secs_f64();
                        let fps = (s.frames_processed - n0) as f64 / dt;
                        (fps, fps * s.bytes_per_frame as f64 / 1e6)
                    }
                    _ => (0.0, 0.0),
                };
                let lost = s.frames_lost;
                bar.set_message(format!("{fps:>8.0} frames/s  {mbs:>8.1} MB/s  lost {lost}"));
            }
        }
    }
    bar.finish_and_clear();
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
