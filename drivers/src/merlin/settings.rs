//! Acquisition settings of a Merlin detector and their control-channel variables
//! (protocols.md §1.3, "Important variables").

use std::fmt;

/// Counter depths Merlin supports, in bits.
pub const COUNTER_DEPTHS: [u32; 4] = [1, 6, 12, 24];

/// What starts (`TRIGGERSTART`) or stops (`TRIGGERSTOP`) a frame, with Merlin's codes (§1.3;
/// codes 0, 1, 3, 5 confirmed by LiberTEM and third-party configurations, 2 by ADMerlin,
/// 4 inferred — check on hardware before relying on falling-edge LVDS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MerlinTrigger {
    /// `0`: the detector's own timer (start: immediately / stop: after the exposure time).
    Internal,
    /// `1`: a rising edge on the TTL trigger input.
    RisingEdgeTtl,
    /// `2`: a falling edge on the TTL trigger input.
    FallingEdgeTtl,
    /// `3`: a rising edge on the LVDS trigger input (typical on Thermo Fisher scan units).
    RisingEdgeLvds,
    /// `4`: a falling edge on the LVDS trigger input.
    FallingEdgeLvds,
    /// `5`: a `CMD,SOFTTRIGGER` on the control channel.
    Soft,
}

impl MerlinTrigger {
    /// Every member, in code order.
    pub const ALL: [Self; 6] = [
        Self::Internal,
        Self::RisingEdgeTtl,
        Self::FallingEdgeTtl,
        Self::RisingEdgeLvds,
        Self::FallingEdgeLvds,
        Self::Soft,
    ];

    /// The code sent as the value of `TRIGGERSTART` / `TRIGGERSTOP`.
    pub const fn code(self) -> u8 {
        match self {
            Self::Internal => 0,
            Self::RisingEdgeTtl => 1,
            Self::FallingEdgeTtl => 2,
            Self::RisingEdgeLvds => 3,
            Self::FallingEdgeLvds => 4,
            Self::Soft => 5,
        }
    }

    /// The member for a code read back from the detector.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.code() == code)
    }
}

impl fmt::Display for MerlinTrigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Internal => "internal",
            Self::RisingEdgeTtl => "rising edge TTL",
            Self::FallingEdgeTtl => "falling edge TTL",
            Self::RisingEdgeLvds => "rising edge LVDS",
            Self::FallingEdgeLvds => "falling edge LVDS",
            Self::Soft => "soft trigger",
        })
    }
}

/// A setting that cannot be sent to a Merlin.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum SettingsError {
    /// A counter depth Merlin does not have.
    #[error("counter depth {depth} not supported by Merlin; supported: 1, 6, 12, 24")]
    CounterDepth {
        /// Requested depth in bits.
        depth: u32,
    },
    /// A time that is negative or not finite.
    #[error("{name} must be a finite time ≥ 0 s, got {value_s} s")]
    Time {
        /// Setting name.
        name: &'static str,
        /// Requested value, s.
        value_s: f64,
    },
    /// Frames per trigger of 0.
    #[error("frames per trigger must be ≥ 1, got 0")]
    FramesPerTrigger,
}

/// Everything [`MerlinControl::configure_acquisition`](super::control::MerlinControl::configure_acquisition)
/// sends, in SI units (converted to the wire's milliseconds there).
#[derive(Clone, Debug, PartialEq)]
pub struct MerlinSettings {
    /// `NUMFRAMESTOACQUIRE`: frames in the acquisition; 0 = continuous.
    pub frames: u64,
    /// `NUMFRAMESPERTRIGGER`: frames per trigger edge (1 = pixel trigger, scan width = line
    /// trigger, all frames = one trigger for the scan).
    pub frames_per_trigger: u64,
    /// `COUNTERDEPTH`: bits per pixel counter, one of 1, 6, 12, 24.
    pub counter_depth: u32,
    /// `ACQUISITIONTIME`: exposure per frame, s (sent in ms).
    pub exposure_s: f64,
    /// `ACQUISITIONPERIOD`: frame period, s (sent in ms); Merlin may lengthen it to fit the
    /// readout, so read it back.
    pub frame_period_s: f64,
    /// `TRIGGERSTART`: what starts a frame (or burst of `frames_per_trigger` frames).
    pub trigger_start: MerlinTrigger,
    /// `TRIGGERSTOP`: what ends a frame (`Internal` = after the exposure time).
    pub trigger_stop: MerlinTrigger,
    /// `CONTINUOUSRW`: continuous read/write (no dead time between frames).
    pub continuous_rw: bool,
    /// `FILEFORMAT`: `true` = raw binary (`R64`, code 2), `false` = binary (`U08`/`U16`/`U32`,
    /// code 0).
    pub raw_format: bool,
    /// `RUNHEADLESS`: no preview in the Merlin GUI (faster).
    pub run_headless: bool,
}

impl MerlinSettings {
    /// Checks the values before anything is sent.
    ///
    /// # Errors
    /// [`SettingsError`] naming the setting and listing what is supported.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if !COUNTER_DEPTHS.contains(&self.counter_depth) {
            return Err(SettingsError::CounterDepth {
                depth: self.counter_depth,
            });
        }
        for (name, value_s) in [
            ("exposure time", self.exposure_s),
            ("frame period", self.frame_period_s),
        ] {
            if !value_s.is_finite() || value_s < 0.0 {
                return Err(SettingsError::Time { name, value_s });
            }
        }
        if self.frames_per_trigger == 0 {
            return Err(SettingsError::FramesPerTrigger);
        }
        Ok(())
    }

    /// The `(VARIABLE, value)` pairs in the order they are sent: output format and mode
    /// first, then depth and timing (exposure before period), then triggering and counts.
    pub fn to_variables(&self) -> Vec<(&'static str, String)> {
        let flag = |b: bool| if b { "1" } else { "0" }.to_string();
        vec![
            (
                "FILEFORMAT",
                if self.raw_format { "2" } else { "0" }.to_string(),
            ),
            ("RUNHEADLESS", flag(self.run_headless)),
            ("CONTINUOUSRW", flag(self.continuous_rw)),
            ("COUNTERDEPTH", self.counter_depth.to_string()),
            ("ACQUISITIONTIME", format_ms(self.exposure_s)),
            ("ACQUISITIONPERIOD", format_ms(self.frame_period_s)),
            ("TRIGGERSTART", self.trigger_start.code().to_string()),
            ("TRIGGERSTOP", self.trigger_stop.code().to_string()),
            ("NUMFRAMESTOACQUIRE", self.frames.to_string()),
            ("NUMFRAMESPERTRIGGER", self.frames_per_trigger.to_string()),
        ]
    }
}

/// Seconds → milliseconds as the shortest decimal that round-trips (`0.001` s → `1`,
/// `0.00055` s → `0.55`); rounded to 1 ns first so binary fractions do not leak digits.
pub(crate) fn format_ms(seconds: f64) -> String {
    let ms = (seconds * 1e9).round() / 1e6;
    format!("{ms}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MerlinSettings {
        MerlinSettings {
            frames: 4096,
            frames_per_trigger: 1,
            counter_depth: 6,
            exposure_s: 0.00055,
            frame_period_s: 0.001,
            trigger_start: MerlinTrigger::RisingEdgeLvds,
            trigger_stop: MerlinTrigger::Internal,
            continuous_rw: true,
            raw_format: true,
            run_headless: true,
        }
    }

    #[test]
    fn variables_carry_codes_and_milliseconds() {
        let vars = sample().to_variables();
        let get = |n: &str| vars.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("ACQUISITIONTIME"), Some("0.55"));
        assert_eq!(get("ACQUISITIONPERIOD"), Some("1"));
        assert_eq!(get("TRIGGERSTART"), Some("3"));
        assert_eq!(get("TRIGGERSTOP"), Some("0"));
        assert_eq!(get("FILEFORMAT"), Some("2"));
        assert_eq!(get("NUMFRAMESTOACQUIRE"), Some("4096"));
        assert_eq!(vars.len(), 10);
    }

    #[test]
    fn validation_lists_what_is_supported() {
        let mut s = sample();
        s.counter_depth = 8;
        let err = s.validate().unwrap_err();
        assert!(err.to_string().contains("supported: 1, 6, 12, 24"));
        let mut s = sample();
        s.exposure_s = f64::NAN;
        assert!(matches!(s.validate(), Err(SettingsError::Time { .. })));
        assert!(sample().validate().is_ok());
    }

    #[test]
    fn trigger_codes_round_trip() {
        for t in MerlinTrigger::ALL {
            assert_eq!(MerlinTrigger::from_code(t.code()), Some(t));
        }
        assert_eq!(MerlinTrigger::from_code(6), None);
        assert_eq!(MerlinTrigger::Soft.code(), 5);
    }
}
