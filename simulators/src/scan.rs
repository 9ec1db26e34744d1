//! A simulated STEM scan engine: walks a raster scan on its own thread and fires the modelled
//! trigger line once per scan position (pixel trigger) or once per line (line trigger), at the
//! configured dwell and flyback times.
//!
//! Timing is deadline-based: position `(r, c)` starts at `t0 + r · (cols · dwell + flyback) +
//! c · dwell`, computed from the indices, so late wake-ups never accumulate into drift. Waits
//! sleep until about 1 ms before a deadline and spin for the rest, which keeps edges within a
//! few µs of their deadline at the price of one busy core during fast scans (as a real scan
//! generator's clock would).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use stemflow_core::devices::{
    DeviceError, ScanEngine, ScanSettings, ScanStatus, TriggerOutput, TriggerSender,
};

/// The scan generator's clock: dwell and flyback times are read back rounded to whole ticks
/// of this period (10 ns, a 100 MHz clock), as real scan generators quantise them.
pub const SCAN_CLOCK_S: f64 = 10e-9;

/// How long [`ScanEngine::status`] waits for a reply from a scan engine that stopped
/// responding before it reports [`DeviceError::Timeout`], s.
pub const STATUS_DEADLINE_S: f64 = 0.05;

/// Faults the simulated scan engine can inject.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanFaults {
    /// After this many scan positions of a scan, the engine goes silent: no more trigger
    /// edges, and [`ScanEngine::status`] returns [`DeviceError::Timeout`] (after
    /// [`STATUS_DEADLINE_S`]) until [`ScanEngine::stop`] resets it.
    pub stop_responding_after: Option<u64>,
    /// The trigger cable is not connected (wrong wiring): the scan runs and reports progress,
    /// but no edge ever reaches the detector.
    pub unplugged_trigger: bool,
}

/// Progress shared between the scan thread and the engine.
#[derive(Debug, Default)]
struct Progress {
    running: AtomicBool,
    positions_done: AtomicU64,
    hung: AtomicBool,
    stop: AtomicBool,
}

/// A simulated scan engine implementing [`ScanEngine`].
///
/// Lifecycle: [`configure`](ScanEngine::configure) validates and reads back the settings,
/// [`start`](ScanEngine::start) spawns the scan thread, [`status`](ScanEngine::status) reports
/// progress, [`stop`](ScanEngine::stop) ends the scan within about a millisecond (idempotent).
/// Dropping the engine stops it.
#[derive(Debug)]
pub struct ScanEngineSim {
    name: String,
    trigger: TriggerSender,
    faults: ScanFaults,
    settings: Option<ScanSettings>,
    progress: Arc<Progress>,
    thread: Option<JoinHandle<()>>,
}

impl ScanEngineSim {
    /// A scan engine named `scan-sim` whose trigger output drives `trigger` (the sending end
    /// of [`stemflow_core::devices::trigger_line`]), with the given faults.
    pub fn new(trigger: TriggerSender, faults: ScanFaults) -> Self {
        Self {
            name: "scan-sim".to_string(),
            trigger,
            faults,
            settings: None,
            progress: Arc::new(Progress::default()),
            thread: None,
        }
    }

    /// Renames the engine (the name appears in every error).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Trigger edges fired so far on this engine's output (all scans).
    pub fn triggers_fired(&self) -> u64 {
        self.trigger.fired()
    }

    fn rejected(&self, setting: &str, requested: String, actual: &str) -> DeviceError {
        DeviceError::Rejected {
            device: self.name.clone(),
            setting: setting.to_string(),
            requested,
            actual: actual.to_string(),
        }
    }

    fn is_running(&self) -> bool {
        self.progress.running.load(Ordering::Acquire)
    }

    /// Joins a finished scan thread so a new scan can start.
    fn reap(&mut self) {
        if !self.is_running()
            && let Some(t) = self.thread.take()
        {
            let _ = t.join();
        }
    }
}

fn quantise(t: f64) -> f64 {
    (t / SCAN_CLOCK_S).round() * SCAN_CLOCK_S
}

/// Waits until `deadline`: sleeps in slices of at most 5 ms (checking `stop`) until 1 ms
/// before it, then spins. Returns false when stopped.
fn wait_until(deadline: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        let left = deadline - now;
        if left > Duration::from_millis(1) {
            std::thread::sleep((left - Duration::from_millis(1)).min(Duration::from_millis(5)));
        } else {
            std::hint::spin_loop();
        }
    }
}

fn run_scan(
    settings: ScanSettings,
    mut trigger: TriggerSender,
    faults: ScanFaults,
    progress: Arc<Progress>,
) {
    let (rows, cols) = (settings.nav_shape.rows, settings.nav_shape.cols);
    let dwell = Duration::from_secs_f64(settings.dwell_time_s);
    let line = Duration::from_secs_f64(cols as f64 * settings.dwell_time_s + settings.flyback_s);
    let t0 = Instant::now();
    let mut done = 0u64;
    'scan: for r in 0..rows {
        let line_start = t0 + line * r as u32;
        for c in 0..cols {
            if faults.stop_responding_after == Some(done) {
                progress.hung.store(true, Ordering::Release);
                break 'scan;
            }
            if !wait_until(line_start + dwell * c as u32, &progress.stop) {
                break 'scan;
            }
            let fire = match settings.trigger {
                TriggerOutput::Pixel => true,
                TriggerOutput::Line => c == 0,
            };
            // Counted before the edge fires, so a detector's frame never outruns the count.
            done += 1;
            progress.positions_done.store(done, Ordering::Release);
            if fire && !faults.unplugged_trigger {
                // A detector that hung up leaves the cable dangling; the scan goes on.
                let _ = trigger.fire();
            }
        }
    }
    if !progress.hung.load(Ordering::Acquire) && !progress.stop.load(Ordering::Relaxed) {
        // The last position still dwells (and its line flies back) before the scan is over.
        let end = t0 + Duration::from_secs_f64(settings.duration_s().max(0.0));
        wait_until(end, &progress.stop);
    }
    progress.running.store(false, Ordering::Release);
}

impl ScanEngine for ScanEngineSim {
    fn name(&self) -> &str {
        &self.name
    }

    /// Validates `settings` (non-empty nav shape; dwell ≥ 0 s where 0 means as fast as
    /// possible; flyback ≥ 0 s; both finite and below one hour) and returns them read back
    /// with dwell and flyback rounded to the [`SCAN_CLOCK_S`] tick.
    ///
    /// # Errors
    /// [`DeviceError::Rejected`] naming the bad setting; [`DeviceError::State`] while a scan
    /// runs.
    fn configure(&mut self, settings: &ScanSettings) -> Result<ScanSettings, DeviceError> {
        self.reap();
        if self.is_running() {
            return Err(DeviceError::State {
                device: self.name.clone(),
                action: "configure".into(),
                state: "scanning".into(),
            });
        }
        if settings.nav_shape.is_empty() {
            return Err(self.rejected(
                "nav_shape",
                settings.nav_shape.to_string(),
                "a scan needs at least 1 × 1 positions",
            ));
        }
        let ok = |t: f64| t.is_finite() && (0.0..3600.0).contains(&t);
        if !ok(settings.dwell_time_s) {
            return Err(self.rejected(
                "dwell_time_s",
                settings.dwell_time_s.to_string(),
                "range 0 (as fast as possible) to 3600 s",
            ));
        }
        if !ok(settings.flyback_s) {
            return Err(self.rejected(
                "flyback_s",
                settings.flyback_s.to_string(),
                "range 0 to 3600 s",
            ));
        }
        let read_back = ScanSettings {
            nav_shape: settings.nav_shape,
            dwell_time_s: quantise(settings.dwell_time_s),
            flyback_s: quantise(settings.flyback_s),
            trigger: settings.trigger,
            region_origin: settings.region_origin,
        };
        self.settings = Some(read_back.clone());
        Ok(read_back)
    }

    /// Starts the configured scan on a new thread; the first trigger edge fires at once.
    ///
    /// # Errors
    /// [`DeviceError::State`] when not configured or already scanning; [`DeviceError::Io`]
    /// when the thread cannot be spawned.
    fn start(&mut self) -> Result<(), DeviceError> {
        self.reap();
        if self.is_running() {
            return Err(DeviceError::State {
                device: self.name.clone(),
                action: "start".into(),
                state: "scanning".into(),
            });
        }
        let Some(settings) = self.settings.clone() else {
            return Err(DeviceError::State {
                device: self.name.clone(),
                action: "start".into(),
                state: "not configured".into(),
            });
        };
        self.progress = Arc::new(Progress::default());
        self.progress.running.store(true, Ordering::Release);
        let (progress, trigger, faults) = (
            self.progress.clone(),
            self.trigger.clone(),
            self.faults.clone(),
        );
        let handle = std::thread::Builder::new()
            .name(format!("{}-scan", self.name))
            .spawn(move || run_scan(settings, trigger, faults, progress))
            .map_err(|e| {
                self.progress.running.store(false, Ordering::Release);
                DeviceError::Io {
                    device: self.name.clone(),
                    during: "starting the scan thread".into(),
                    source: e,
                }
            })?;
        self.thread = Some(handle);
        Ok(())
    }

    /// Stops the scan (within about a millisecond) and clears a `stop_responding_after`
    /// fault; a no-op when idle.
    fn stop(&mut self) -> Result<(), DeviceError> {
        self.progress.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.progress.running.store(false, Ordering::Release);
        self.progress.hung.store(false, Ordering::Release);
        Ok(())
    }

    /// Running flag and positions visited.
    ///
    /// # Errors
    /// [`DeviceError::Timeout`] (after [`STATUS_DEADLINE_S`]) once a `stop_responding_after`
    /// fault has struck.
    fn status(&mut self) -> Result<ScanStatus, DeviceError> {
        if self.progress.hung.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_secs_f64(STATUS_DEADLINE_S));
            return Err(DeviceError::Timeout {
                device: self.name.clone(),
                what: format!(
                    "a status reply (engine silent after {} positions)",
                    self.progress.positions_done.load(Ordering::Acquire)
                ),
                waited_s: STATUS_DEADLINE_S,
            });
        }
        Ok(ScanStatus {
            running: self.is_running(),
            positions_done: self.progress.positions_done.load(Ordering::Acquire),
        })
    }
}

impl Drop for ScanEngineSim {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stemflow_core::NavShape;
    use stemflow_core::devices::trigger_line;

    fn settings(rows: usize, cols: usize, dwell: f64, trigger: TriggerOutput) -> ScanSettings {
        ScanSettings {
            nav_shape: NavShape::new(rows, cols),
            dwell_time_s: dwell,
            flyback_s: 0.0,
            trigger,
            region_origin: None,
        }
    }

    fn wait_idle(engine: &mut ScanEngineSim, limit: Duration) -> ScanStatus {
        let deadline = Instant::now() + limit;
        loop {
            let s = engine.status().unwrap();
            if !s.running || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn pixel_trigger_fires_once_per_position_at_the_dwell_time() {
        let (tx, rx) = trigger_line();
        let mut e = ScanEngineSim::new(tx, ScanFaults::default());
        let rb = e
            .configure(&ScanSettings {
                flyback_s: 1e-3,
                ..settings(4, 5, 200e-6, TriggerOutput::Pixel)
            })
            .unwrap();
        assert_eq!(rb.dwell_time_s, 200e-6);
        let t0 = Instant::now();
        e.start().unwrap();
        let s = wait_idle(&mut e, Duration::from_secs(2));
        let took = t0.elapsed().as_secs_f64();
        assert_eq!(s.positions_done, 20);
        assert!(!s.running);
        assert_eq!(rx.clear(), 20);
        // 20 × 0.2 ms + 4 × 1 ms flyback = 8 ms, without drift.
        assert!((8e-3..0.5).contains(&took), "took {took} s");
    }

    #[test]
    fn line_trigger_fires_once_per_row_and_edges_are_spaced_by_the_line_time() {
        let (tx, rx) = trigger_line();
        let mut e = ScanEngineSim::new(tx, ScanFaults::default());
        e.configure(&settings(3, 10, 100e-6, TriggerOutput::Line))
            .unwrap();
        let t0 = Instant::now();
        e.start().unwrap();
        let mut times = Vec::new();
        while let Some(_p) = rx.wait(Duration::from_millis(200)) {
            times.push(t0.elapsed().as_secs_f64());
        }
        assert_eq!(times.len(), 3);
        // An edge can be received late (a busy test machine) but never before its deadline:
        // the third line starts 2 line times (2 × 10 × 0.1 ms) after the first.
        assert!(times[2] >= 2e-3, "third line edge after {} s", times[2]);
        assert!(times[2] < 0.1, "third line edge after {} s", times[2]);
        assert_eq!(wait_idle(&mut e, Duration::from_secs(1)).positions_done, 30);
    }

    #[test]
    fn configure_rejects_bad_settings_and_quantises_dwell() {
        let (tx, _rx) = trigger_line();
        let mut e = ScanEngineSim::new(tx, ScanFaults::default());
        let err = e
            .configure(&settings(0, 4, 1e-3, TriggerOutput::Pixel))
            .unwrap_err();
        assert!(matches!(err, DeviceError::Rejected { ref setting, .. } if setting == "nav_shape"));
        let err = e
            .configure(&settings(2, 2, -1.0, TriggerOutput::Pixel))
            .unwrap_err();
        assert!(err.to_string().contains("dwell_time_s"), "{err}");
        assert!(
            e.configure(&settings(2, 2, f64::NAN, TriggerOutput::Pixel))
                .is_err()
        );
        let rb = e
            .configure(&settings(2, 2, 1.234_567e-6, TriggerOutput::Pixel))
            .unwrap();
        assert!(
            (rb.dwell_time_s - 1.23e-6).abs() < 1e-15,
            "{}",
            rb.dwell_time_s
        );
        assert!(matches!(e.start(), Ok(())));
        assert!(matches!(e.start(), Err(DeviceError::State { .. })) || !e.is_running());
        e.stop().unwrap();
        e.stop().unwrap();
    }

    #[test]
    fn start_before_configure_is_a_state_error() {
        let (tx, _rx) = trigger_line();
        let mut e = ScanEngineSim::new(tx, ScanFaults::default());
        assert!(matches!(e.start(), Err(DeviceError::State { .. })));
    }

    #[test]
    fn stop_is_prompt_during_a_long_scan() {
        let (tx, rx) = trigger_line();
        let mut e = ScanEngineSim::new(tx, ScanFaults::default());
        e.configure(&settings(100, 100, 10e-3, TriggerOutput::Pixel))
            .unwrap();
        e.start().unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let t = Instant::now();
        e.stop().unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        let s = e.status().unwrap();
        assert!(!s.running);
        assert!(s.positions_done >= 2 && s.positions_done < 100, "{s:?}");
        assert_eq!(rx.clear() as u64, s.positions_done);
    }

    #[test]
    fn silent_engine_times_out_and_unplugged_trigger_fires_nothing() {
        let (tx, rx) = trigger_line();
        let mut e = ScanEngineSim::new(
            tx.clone(),
            ScanFaults {
                stop_responding_after: Some(7),
                unplugged_trigger: false,
            },
        );
        e.configure(&settings(4, 4, 0.0, TriggerOutput::Pixel))
            .unwrap();
        e.start().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let err = e.status().unwrap_err();
        assert!(matches!(err, DeviceError::Timeout { .. }), "{err}");
        assert_eq!(rx.clear(), 7);
        e.stop().unwrap();
        assert!(e.status().is_ok(), "stop resets the fault");

        let mut u = ScanEngineSim::new(
            tx,
            ScanFaults {
                stop_responding_after: None,
                unplugged_trigger: true,
            },
        );
        u.configure(&settings(4, 4, 0.0, TriggerOutput::Pixel))
            .unwrap();
        u.start().unwrap();
        assert_eq!(wait_idle(&mut u, Duration::from_secs(1)).positions_done, 16);
        assert_eq!(rx.clear(), 0);
    }
}
