//! A waveform generator as the pixel clock of a scan: one TTL pulse per scan position (or
//! per line), a burst of exactly as many pulses as the scan has positions, at the dwell time.
//! It drives the detector's trigger input when the scan generator has no trigger output of
//! its own, or when the detector must be clocked independently of it.
//!
//! The commands are the SCPI subset that burst-capable waveform generators share (Keysight
//! 33500B/33600A "Operating and Service Guide", SOURce:FUNCtion:PULSe, SOURce:BURSt,
//! TRIGger and OUTPut subsystems; the same forms are accepted by Rigol DG and Siglent SDG
//! generators' SCPI layers):
//!
//! | step | commands |
//! |---|---|
//! | configure | `OUTP<c> OFF`, `SOUR<c>:FUNC PULS`, `SOUR<c>:FUNC:PULS:PER <s>`, `SOUR<c>:FUNC:PULS:WIDT <s>`, `SOUR<c>:VOLT:LOW 0`, `SOUR<c>:VOLT:HIGH <V>`, `SOUR<c>:BURS:MODE TRIG`, `SOUR<c>:BURS:NCYC <n>`, `SOUR<c>:BURS:STAT ON`, `TRIG<c>:SOUR BUS\|EXT`, `OUTP<c> ON` — each followed by `SYST:ERR?` |
//! | read back | `SOUR<c>:FUNC:PULS:PER?`, `SOUR<c>:BURS:NCYC?`, `TRIG<c>:SOUR?` |
//! | start | `*TRG` (bus trigger); with an external start the burst begins on the generator's trigger input |
//! | stop | `OUTP<c> OFF` |

use super::{ScpiAddress, ScpiClient, ScpiError};
use std::time::{Duration, Instant};
use stemflow_core::NavShape;
use stemflow_core::devices::{DeviceError, ScanEngine, ScanSettings, ScanStatus, TriggerOutput};

/// What starts the burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelClockTrigger {
    /// `*TRG` from stemflow when the scan starts (`TRIG:SOUR BUS`).
    Bus,
    /// An edge on the generator's trigger input, e.g. from the scan generator's frame start
    /// (`TRIG:SOUR EXT`).
    External,
}

/// Where the generator is and how to drive it.
#[derive(Clone, Debug)]
pub struct PixelClockConfig {
    /// Name in errors and metadata.
    pub name: String,
    /// TCP or serial address.
    pub address: ScpiAddress,
    /// Output channel, 1-based.
    pub channel: u8,
    /// Deadline for connecting and for every response.
    pub timeout: Duration,
    /// Pulse high level, V (TTL: 3.3 or 5 V; low level is 0 V).
    pub high_level_v: f64,
    /// Pulse width as a fraction of the period (0 < f < 1).
    pub duty: f64,
    /// What starts the burst.
    pub trigger: PixelClockTrigger,
    /// Send `*RST`/`*CLS` on connect.
    pub reset_on_connect: bool,
}

impl PixelClockConfig {
    /// Channel 1, 2 s deadline, 3.3 V pulses of half the period, bus trigger, reset on
    /// connect.
    pub fn new(address: ScpiAddress) -> Self {
        Self {
            name: "pixel clock".into(),
            address,
            channel: 1,
            timeout: Duration::from_secs(2),
            high_level_v: 3.3,
            duty: 0.5,
            trigger: PixelClockTrigger::Bus,
            reset_on_connect: true,
        }
    }
}

/// Largest burst count accepted by the common generators (Keysight 33500B: 10⁸ cycles).
pub const MAX_BURST_COUNT: u64 = 100_000_000;

/// A burst waveform generator as a [`ScanEngine`]: it clocks the detector, it does not move
/// the probe.
#[derive(Debug)]
pub struct PixelClock {
    cfg: PixelClockConfig,
    client: ScpiClient,
    /// The identity reported by `*IDN?`.
    identity: String,
    /// Configured pulses, period (s), positions per pulse.
    burst: Option<(u64, f64, u64)>,
    started: Option<Instant>,
}

impl PixelClock {
    /// Connects, identifies the instrument (`*IDN?`) and resets it if configured.
    ///
    /// # Errors
    /// [`DeviceError`] naming the generator.
    pub fn connect(cfg: PixelClockConfig) -> Result<Self, DeviceError> {
        let mut client = ScpiClient::connect(&cfg.name, &cfg.address, cfg.timeout)
            .map_err(ScpiError::into_device_error)?;
        let id = client.identify().map_err(ScpiError::into_device_error)?;
        if cfg.reset_on_connect {
            client.reset().map_err(ScpiError::into_device_error)?;
        }
        // Stale errors from before we connected are not ours.
        client.errors().map_err(ScpiError::into_device_error)?;
        Ok(Self {
            identity: format!(
                "{} {} (serial {}, firmware {})",
                id.manufacturer, id.model, id.serial, id.firmware
            ),
            cfg,
            client,
            burst: None,
            started: None,
        })
    }

    /// The instrument as it identified itself.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn set(&mut self, command: String) -> Result<(), DeviceError> {
        self.client
            .set(&command)
            .map_err(ScpiError::into_device_error)
    }

    fn query_f64(&mut self, q: &str) -> Result<f64, DeviceError> {
        let r = self.client.query(q).map_err(ScpiError::into_device_error)?;
        r.parse::<f64>().map_err(|_| DeviceError::Protocol {
            device: self.client.device().to_string(),
            expected: format!("a number in response to `{q}`"),
            observed: format!("`{r}`"),
        })
    }

    fn rejected(&self, setting: &str, requested: String, actual: String) -> DeviceError {
        DeviceError::Rejected {
            device: self.client.device().to_string(),
            setting: setting.into(),
            requested,
            actual,
        }
    }
}

impl ScanEngine for PixelClock {
    fn name(&self) -> &str {
        self.client.device()
    }

    /// Pixel trigger: `positions` pulses at the dwell time (no flyback: a burst has no gaps,
    /// so a non-zero flyback is rejected). Line trigger: `rows` pulses at
    /// `cols × dwell + flyback`. Every setting is checked in the error queue and the period,
    /// count and trigger source are read back.
    fn configure(&mut self, s: &ScanSettings) -> Result<ScanSettings, DeviceError> {
        let c = self.cfg.channel;
        let nav = s.nav_shape;
        let (pulses, period, per_pulse) = match s.trigger {
            TriggerOutput::Pixel => {
                if s.flyback_s > 0.0 {
                    return Err(self.rejected(
                        "flyback",
                        format!("{} s", s.flyback_s),
                        "0 s: a pixel-clock burst has no flyback gaps (use a line trigger)".into(),
                    ));
                }
                (nav.len() as u64, s.dwell_time_s, 1u64)
            }
            TriggerOutput::Line => (
                nav.rows as u64,
                nav.cols as f64 * s.dwell_time_s + s.flyback_s,
                nav.cols as u64,
            ),
        };
        if !(period.is_finite() && period > 0.0) {
            return Err(self.rejected("period", format!("{period} s"), "a positive period".into()));
        }
        if pulses == 0 || pulses > MAX_BURST_COUNT {
            return Err(self.rejected(
                "burst count",
                pulses.to_string(),
                format!("1 to {MAX_BURST_COUNT} pulses"),
            ));
        }
        let width = period * self.cfg.duty.clamp(0.01, 0.99);
        let source = match self.cfg.trigger {
            PixelClockTrigger::Bus => "BUS",
            PixelClockTrigger::External => "EXT",
        };
        for cmd in [
            format!("OUTP{c} OFF"),
            format!("SOUR{c}:FUNC PULS"),
            format!("SOUR{c}:FUNC:PULS:PER {period:.9e}"),
            format!("SOUR{c}:FUNC:PULS:WIDT {width:.9e}"),
            format!("SOUR{c}:VOLT:LOW 0"),
            format!("SOUR{c}:VOLT:HIGH {}", self.cfg.high_level_v),
            format!("SOUR{c}:BURS:MODE TRIG"),
            format!("SOUR{c}:BURS:NCYC {pulses}"),
            format!("SOUR{c}:BURS:STAT ON"),
            format!("TRIG{c}:SOUR {source}"),
        ] {
            self.set(cmd)?;
        }
        let period_rb = self.query_f64(&format!("SOUR{c}:FUNC:PULS:PER?"))?;
        if (period_rb - period).abs() > 1e-9_f64.max(period * 1e-6) {
            return Err(self.rejected(
                &format!("SOUR{c}:FUNC:PULS:PER"),
                format!("{period:.9e} s"),
                format!("{period_rb:.9e} s read back"),
            ));
        }
        let count_rb = self.query_f64(&format!("SOUR{c}:BURS:NCYC?"))?;
        if count_rb.round() as u64 != pulses {
            return Err(self.rejected(
                &format!("SOUR{c}:BURS:NCYC"),
                pulses.to_string(),
                format!("{count_rb} read back"),
            ));
        }
        let src_rb = self
            .client
            .query(&format!("TRIG{c}:SOUR?"))
            .map_err(ScpiError::into_device_error)?;
        if !src_rb.eq_ignore_ascii_case(source) && !source.starts_with(&src_rb.to_uppercase()) {
            return Err(self.rejected(
                &format!("TRIG{c}:SOUR"),
                source.into(),
                format!("`{src_rb}` read back"),
            ));
        }
        self.set(format!("OUTP{c} ON"))?;
        self.burst = Some((pulses, period_rb, per_pulse));
        self.started = None;
        let dwell = match s.trigger {
            TriggerOutput::Pixel => period_rb,
            TriggerOutput::Line => s.dwell_time_s,
        };
        Ok(ScanSettings {
            nav_shape: NavShape::new(nav.rows, nav.cols),
            dwell_time_s: dwell,
            flyback_s: s.flyback_s,
            trigger: s.trigger,
            // A pixel clock does not move the probe; the region is the scan generator's.
            region_origin: s.region_origin,
        })
    }

    fn start(&mut self) -> Result<(), DeviceError> {
        if self.burst.is_none() {
            return Err(DeviceError::State {
                device: self.client.device().to_string(),
                action: "start".into(),
                state: "not configured".into(),
            });
        }
        if self.cfg.trigger == PixelClockTrigger::Bus {
            self.client
                .send("*TRG")
                .map_err(ScpiError::into_device_error)?;
            // *TRG has no response; the error queue tells whether it was accepted.
            let errors = self.client.errors().map_err(ScpiError::into_device_error)?;
            if let Some((code, msg)) = errors.first() {
                return Err(self.rejected("*TRG", "no error".into(), format!("{code} \"{msg}\"")));
            }
        }
        self.started = Some(Instant::now());
        Ok(())
    }

    fn stop(&mut self) -> Result<(), DeviceError> {
        self.started = None;
        let c = self.cfg.channel;
        self.set(format!("OUTP{c} OFF"))
    }

    /// A burst generator does not count its pulses: `positions_done` is computed from the
    /// time since start and the period read back.
    fn status(&mut self) -> Result<ScanStatus, DeviceError> {
        let (Some((pulses, period, per_pulse)), Some(t0)) = (self.burst, self.started) else {
            return Ok(ScanStatus {
                running: false,
                positions_done: 0,
            });
        };
        let done = ((t0.elapsed().as_secs_f64() / period) as u64).min(pulses);
        Ok(ScanStatus {
            running: done < pulses,
            positions_done: done * per_pulse,
        })
    }
}
