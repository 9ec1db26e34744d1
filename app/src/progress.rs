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

/// The error of a command the user cancelled (Ctrl-C) after its results were written; the
/// process then exits with [`CANCELLED_EXIT_CODE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled {
    /// Frames processed (or received) before the run ended, and frames the run was to
    /// process (the scan's positions); `None` where no single run was cut short (a queue).
    pub frames: Option<(u64, u64)>,
}

impl Cancelled {
    /// A run cancelled after `done` of `expected` frames.
    pub fn after(done: u64, expected: u64) -> Self {
        Self {
            frames: Some((done, expected)),
        }
    }
}

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cancelled by the user")?;
        if let Some((done, expected)) = self.frames {
            write!(f, " after {done} of {expected} frames")?;
        }
        Ok(())
    }
}

impl std::error::Error for Cancelled {}

/// Exit status of a cancelled command: 128 + SIGINT, the shell's convention for Ctrl-C.
pub const CANCELLED_EXIT_CODE: u8 = 130;

/// Ctrl-C (SIGINT) for the lifetime of the process: the first one sets the flag, runs
/// `on_first` (e.g. cancels the running acquisition) and says `Ctrl-C: {doing}` on stderr
/// (e.g. `cancelling the run`); the second one
/// exits at once with [`CANCELLED_EXIT_CODE`], without writing anything.
///
/// The handler is installed before this returns (a Ctrl-C from then on is caught), on a
/// thread of its own with a small tokio runtime, so that blocking commands need no
/// runtime of their own.
///
/// # Errors
/// The thread or the signal handler could not be set up.
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
        .name("stemflow-ctrl-c".into())
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
                let mut interrupts = match Interrupts::new() {
                    Ok(i) => i,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                if interrupts.next().await.is_err() {
                    return;
                }
                set.store(true, Ordering::SeqCst);
                eprintln!("stemflow: Ctrl-C: {doing} (Ctrl-C again to quit at once)");
                on_first();
                if interrupts.next().await.is_ok() {
                    eprintln!("stemflow: Ctrl-C again: quitting without finishing the outputs");
                    std::process::exit(i32::from(CANCELLED_EXIT_CODE));
                }
            });
        })
        .map_err(|e| anyhow::anyhow!("starting the Ctrl-C handler thread: {e}"))?;
    match ready_rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(())) => Ok(flag),
        Ok(Err(e)) => anyhow::bail!("installing the Ctrl-C handler: {e}"),
        Err(_) => anyhow::bail!("installing the Ctrl-C handler: no answer within 5 s"),
    }
}

/// SIGINT as a stream: registered when created (unix), so none is missed after that.
#[cfg(unix)]
struct Interrupts(tokio::signal::unix::Signal);

#[cfg(unix)]
impl Interrupts {
    fn new() -> std::io::Result<Self> {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).map(Self)
    }
    async fn next(&mut self) -> Result<(), ()> {
        self.0.recv().await.ok_or(())
    }
}

/// Ctrl-C as a stream (registered on the first wait).
#[cfg(not(unix))]
struct Interrupts;

#[cfg(not(unix))]
impl Interrupts {
    fn new() -> std::io::Result<Self> {
        Ok(Self)
    }
    async fn next(&mut self) -> Result<(), ()> {
        tokio::signal::ctrl_c().await.map_err(|_| ())
    }
}
