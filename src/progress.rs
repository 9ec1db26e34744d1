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
