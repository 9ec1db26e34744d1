//! The Merlin control channel's pure logic (protocols.md §1.3): request parsing, response
//! framing, and the detector variables with their semantics. No I/O here; the server in
//! `mod.rs` feeds requests in and acts on commands.

use super::wire::{self, Geometry, PixelFormat};
use std::collections::BTreeMap;
use stemflow_core::SigShape;

/// Status codes of control responses (§1.3).
pub(crate) mod status {
    /// Accepted.
    pub(crate) const OK: u8 = 0;
    /// Busy: SET or STARTACQUISITION while an acquisition is armed or running.
    pub(crate) const BUSY: u8 = 1;
    /// Unrecognised variable, command or request type.
    pub(crate) const UNKNOWN: u8 = 2;
    /// Parameter out of range (or read-only, or not valid for the source).
    pub(crate) const RANGE: u8 = 3;
}

/// One parsed control request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Request<'a> {
    Get(&'a str),
    Set(&'a str, &'a str),
    Cmd(&'a str),
    /// Anything else; answered `<kind>,<name>,2` (or `,3` for a wrong argument count).
    Bad {
        kind: &'a str,
        name: &'a str,
        status: u8,
    },
}

/// Parses an MPX payload (`GET,NAME`, `SET,NAME,VALUE`, `CMD,NAME`). GET and CMD accept
/// LiberTEM's dummy third field (`GET,IMAGEX,0`); fields are trimmed (command files may end
/// lines with CR).
pub(crate) fn parse_request(payload: &str) -> Request<'_> {
    let fields: Vec<&str> = payload.split(',').map(str::trim).collect();
    let kind = fields[0];
    let name = fields.get(1).copied().unwrap_or("");
    match (kind, fields.len()) {
        ("GET", 2 | 3) => Request::Get(name),
        ("CMD", 2 | 3) => Request::Cmd(name),
        ("SET", 3) => Request::Set(name, fields[2]),
        ("GET" | "SET" | "CMD", _) => Request::Bad {
            kind,
            name,
            status: status::RANGE,
        },
        _ => Request::Bad {
            kind,
            name,
            status: status::UNKNOWN,
        },
    }
}

/// A framed response: `GET,<name>,<value>,<status>` when `value` is given, else
/// `<kind>,<name>,<status>`, with the real Merlin length (§1.2: counts the leading comma).
pub(crate) fn response(kind: &str, name: &str, value: Option<&str>, status: u8) -> Vec<u8> {
    let payload = match value {
        Some(v) => format!("{kind},{name},{v},{status}"),
        None => format!("{kind},{name},{status}"),
    };
    wire::mpx_message(payload.as_bytes())
}

/// Variables that are stored and read back without further semantics, with their initial
/// values (mode, threshold, file-writing and trigger-output settings of §1.3).
const PLAIN: &[(&str, &str)] = &[
    ("COLOURMODE", "0"),
    ("CHARGESUMMING", "0"),
    ("GAIN", "0"),
    ("ENABLECOUNTER1", "0"),
    ("THRESHOLD0", "2"),
    ("THRESHOLD1", "511"),
    ("THRESHOLD2", "0"),
    ("THRESHOLD3", "0"),
    ("THRESHOLD4", "0"),
    ("THRESHOLD5", "0"),
    ("THRESHOLD6", "0"),
    ("THRESHOLD7", "0"),
    ("OPERATINGENERGY", "0"),
    ("HVBIAS", "120"),
    ("FILEENABLE", "0"),
    ("FILEDIRECTORY", ""),
    ("FILENAME", ""),
    ("IMAGESPERFILE", "1000"),
    ("USETIMESTAMPING", "0"),
    ("SAVEALLTOFILE", "0"),
    ("TRIGGEROUTTTL", "0"),
    ("TRIGGEROUTLVDS", "0"),
    ("TRIGGEROUTTTLINVERT", "0"),
    ("TRIGGEROUTLVDSINVERT", "0"),
];

/// Modelled readout dead time per frame without `CONTINUOUSRW`, ms, by counter depth. A
/// simulator model, not measured on hardware: with `CONTINUOUSRW 1` readout overlaps the next
/// exposure and costs nothing.
fn readout_ms(depth: u8) -> f64 {
    match depth {
        1 => 0.05,
        6 => 0.3,
        12 => 0.6,
        _ => 1.2,
    }
}

/// The detector's variables.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// `NUMFRAMESTOACQUIRE`: frames per acquisition, 0 = continuous.
    pub(crate) num_frames: u64,
    /// `NUMFRAMESPERTRIGGER`, ≥ 1.
    pub(crate) frames_per_trigger: u64,
    /// `COUNTERDEPTH`: 1, 6, 12 or 24.
    pub(crate) counter_depth: u8,
    /// `ACQUISITIONTIME`, ms (> 0).
    pub(crate) acq_time_ms: f64,
    /// `ACQUISITIONPERIOD` as set, ms; read back lengthened to fit exposure + readout.
    pub(crate) acq_period_ms: f64,
    /// `TRIGGERSTART`: 0 internal, 1–4 external edges, 5 soft.
    pub(crate) trigger_start: u8,
    /// `TRIGGERSTOP`, same codes (stored and reported in the HDR only).
    pub(crate) trigger_stop: u8,
    /// `CONTINUOUSRW`.
    pub(crate) continuous_rw: bool,
    /// `FILEFORMAT`: 0 binary, 2 raw (R64).
    pub(crate) file_format: u8,
    /// `RUNHEADLESS` (no effect in the simulator).
    pub(crate) run_headless: bool,
    /// `IMAGEY` × `IMAGEX`, read-only, from the source.
    pub(crate) image: SigShape,
    /// `SOFTWAREVERSION`, read-only.
    pub(crate) software_version: String,
    /// A recording fixes counter depth and file format: other values answer status 3.
    pub(crate) fixed: Option<(u8, u8)>,
    /// Plain variables (see `PLAIN`).
    pub(crate) plain: BTreeMap<&'static str, String>,
    /// True from STARTACQUISITION until the acquisition ends, is stopped or aborted.
    pub(crate) busy: bool,
}

impl Settings {
    /// Initial settings for a source of frames `image` large; `fixed` = (depth, file format)
    /// of a recording.
    pub(crate) fn new(image: SigShape, software_version: String, fixed: Option<(u8, u8)>) -> Self {
        let (counter_depth, file_format) = fixed.unwrap_or((12, 0));
        Self {
            num_frames: 1,
            frames_per_trigger: 1,
            counter_depth,
            acq_time_ms: 1.0,
            acq_period_ms: 0.0,
            trigger_start: 0,
            trigger_stop: 0,
            continuous_rw: true,
            file_format,
            run_headless: false,
            image,
            software_version,
            fixed,
            plain: PLAIN.iter().map(|&(k, v)| (k, v.to_string())).collect(),
            busy: false,
        }
    }

    /// Frame period as read back, ms: `max(period, time + readout)`.
    pub(crate) fn period_ms(&self) -> f64 {
        let readout = if self.continuous_rw {
            0.0
        } else {
            readout_ms(self.counter_depth)
        };
        self.acq_period_ms.max(self.acq_time_ms + readout)
    }

    /// The pixel format the current settings produce.
    pub(crate) fn format(&self) -> Option<PixelFormat> {
        PixelFormat::for_settings(self.counter_depth, self.file_format)
    }

    /// Whether `depth` and `format` can be produced from this source.
    fn producible(&self, depth: u8, file_format: u8) -> bool {
        if let Some(f) = self.fixed {
            return f == (depth, file_format);
        }
        match PixelFormat::for_settings(depth, file_format) {
            Some(PixelFormat::R64) => Geometry::for_sig(self.image).raw_ok(depth),
            Some(_) => true,
            None => false,
        }
    }

    /// GET: the value, or the status to answer (2 = unknown variable).
    pub(crate) fn get(&self, name: &str) -> Result<String, u8> {
        let b = |v: bool| if v { "1" } else { "0" }.to_string();
        Ok(match name {
            "NUMFRAMESTOACQUIRE" => self.num_frames.to_string(),
            "NUMFRAMESPERTRIGGER" => self.frames_per_trigger.to_string(),
            "COUNTERDEPTH" => self.counter_depth.to_string(),
            "ACQUISITIONTIME" => self.acq_time_ms.to_string(),
            "ACQUISITIONPERIOD" => self.period_ms().to_string(),
            "TRIGGERSTART" => self.trigger_start.to_string(),
            "TRIGGERSTOP" => self.trigger_stop.to_string(),
            "CONTINUOUSRW" => b(self.continuous_rw),
            "FILEFORMAT" => self.file_format.to_string(),
            "RUNHEADLESS" => b(self.run_headless),
            "IMAGEX" => self.image.cols.to_string(),
            "IMAGEY" => self.image.rows.to_string(),
            "SOFTWAREVERSION" => self.software_version.clone(),
            "DETECTORSTATUS" => b(self.busy),
            other => return self.plain.get(other).cloned().ok_or(status::UNKNOWN),
        })
    }

    /// SET: applies `value` and returns the status (0 ok, 1 busy, 2 unknown, 3 out of range
    /// or read-only). Nothing changes unless the status is 0.
    pub(crate) fn set(&mut self, name: &str, value: &str) -> u8 {
        let known = matches!(
            name,
            "NUMFRAMESTOACQUIRE"
                | "NUMFRAMESPERTRIGGER"
                | "COUNTERDEPTH"
                | "ACQUISITIONTIME"
                | "ACQUISITIONPERIOD"
                | "TRIGGERSTART"
                | "TRIGGERSTOP"
                | "CONTINUOUSRW"
                | "FILEFORMAT"
                | "RUNHEADLESS"
                | "IMAGEX"
                | "IMAGEY"
                | "SOFTWAREVERSION"
                | "DETECTORSTATUS"
        ) || self.plain.contains_key(name);
        if !known {
            return status::UNKNOWN;
        }
        if self.busy {
            return status::BUSY;
        }
        let int = |max: u64| value.parse::<u64>().ok().filter(|&v| v <= max);
        let ms = |lo_exclusive: bool| {
            value.parse::<f64>().ok().filter(|v| {
                v.is_finite() && *v <= 3.6e6 && if lo_exclusive { *v > 0.0 } else { *v >= 0.0 }
            })
        };
        let flag = || match value {
            "0" => Some(false),
            "1" => Some(true),
            _ => None,
        };
        let ok = match name {
            "NUMFRAMESTOACQUIRE" => int(u32::MAX as u64).map(|v| self.num_frames = v),
            "NUMFRAMESPERTRIGGER" => int(u32::MAX as u64)
                .filter(|&v| v >= 1)
                .map(|v| self.frames_per_trigger = v),
            "COUNTERDEPTH" => int(24)
                .map(|v| v as u8)
                .filter(|&d| matches!(d, 1 | 6 | 12 | 24) && self.producible(d, self.file_format))
                .map(|d| self.counter_depth = d),
            "ACQUISITIONTIME" => ms(true).map(|v| self.acq_time_ms = v),
            "ACQUISITIONPERIOD" => ms(false).map(|v| self.acq_period_ms = v),
            "TRIGGERSTART" => int(5).map(|v| self.trigger_start = v as u8),
            "TRIGGERSTOP" => int(5).map(|v| self.trigger_stop = v as u8),
            "CONTINUOUSRW" => flag().map(|v| self.continuous_rw = v),
            "FILEFORMAT" => int(2)
                .map(|v| v as u8)
                .filter(|&f| f != 1 && self.producible(self.counter_depth, f))
                .map(|f| self.file_format = f),
            "RUNHEADLESS" => flag().map(|v| self.run_headless = v),
            "IMAGEX" | "IMAGEY" | "SOFTWAREVERSION" | "DETECTORSTATUS" => None,
            plain => {
                if let Some(slot) = self.plain.get_mut(plain) {
                    *slot = value.to_string();
                }
                Some(())
            }
        };
        if ok.is_some() {
            status::OK
        } else {
            status::RANGE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::new(SigShape::new(256, 256), "t".into(), None)
    }

    #[test]
    fn requests_parse_with_and_without_the_dummy_suffix() {
        assert_eq!(parse_request("GET,IMAGEX"), Request::Get("IMAGEX"));
        assert_eq!(parse_request("GET,IMAGEX,0"), Request::Get("IMAGEX"));
        assert_eq!(
            parse_request("CMD,SOFTTRIGGER,0"),
            Request::Cmd("SOFTTRIGGER")
        );
        assert_eq!(
            parse_request("SET,COUNTERDEPTH,12\r"),
            Request::Set("COUNTERDEPTH", "12")
        );
        assert!(matches!(
            parse_request("SET,COUNTERDEPTH"),
            Request::Bad { status: 3, .. }
        ));
        assert!(matches!(
            parse_request("PUT,X,1"),
            Request::Bad {
                status: 2,
                kind: "PUT",
                ..
            }
        ));
        assert!(matches!(parse_request(""), Request::Bad { status: 2, .. }));
    }

    #[test]
    fn response_length_counts_the_leading_comma() {
        assert_eq!(
            response("SET", "COUNTERDEPTH", None, 0),
            b"MPX,0000000019,SET,COUNTERDEPTH,0"
        );
        assert_eq!(
            response("GET", "IMAGEX", Some("256"), 0),
            b"MPX,0000000017,GET,IMAGEX,256,0"
        );
    }

    #[test]
    fn variables_have_semantics() {
        let mut s = settings();
        assert_eq!(s.set("COUNTERDEPTH", "6"), status::OK);
        assert_eq!(s.set("COUNTERDEPTH", "8"), status::RANGE);
        assert_eq!(s.get("COUNTERDEPTH").unwrap(), "6");
        assert_eq!(s.set("NUMFRAMESPERTRIGGER", "0"), status::RANGE);
        assert_eq!(s.set("NUMFRAMESTOACQUIRE", "0"), status::OK);
        assert_eq!(s.set("NUMFRAMESTOACQUIRE", "-1"), status::RANGE);
        assert_eq!(s.set("TRIGGERSTART", "6"), status::RANGE);
        assert_eq!(s.set("IMAGEX", "128"), status::RANGE);
        assert_eq!(s.set("NOSUCHTHING", "1"), status::UNKNOWN);
        assert_eq!(s.get("NOSUCHTHING"), Err(status::UNKNOWN));
        assert_eq!(s.set("THRESHOLD0", "5.5"), status::OK);
        assert_eq!(s.get("THRESHOLD0").unwrap(), "5.5");
        // Period read back = max(period, time + readout).
        assert_eq!(s.set("ACQUISITIONTIME", "2"), status::OK);
        assert_eq!(s.set("ACQUISITIONPERIOD", "1"), status::OK);
        assert_eq!(s.get("ACQUISITIONPERIOD").unwrap(), "2");
        assert_eq!(s.set("CONTINUOUSRW", "0"), status::OK);
        assert_eq!(s.get("ACQUISITIONPERIOD").unwrap(), "2.3");
        assert_eq!(s.set("ACQUISITIONPERIOD", "5"), status::OK);
        assert_eq!(s.get("ACQUISITIONPERIOD").unwrap(), "5");
        assert_eq!(s.set("ACQUISITIONTIME", "0"), status::RANGE);
        // Raw 24-bit does not exist; raw 6-bit on a 256 × 256 chip does.
        assert_eq!(s.set("FILEFORMAT", "2"), status::OK);
        assert_eq!(s.set("COUNTERDEPTH", "24"), status::RANGE);
        assert_eq!(s.set("FILEFORMAT", "1"), status::RANGE);
        s.busy = true;
        assert_eq!(s.set("COUNTERDEPTH", "12"), status::BUSY);
        assert_eq!(s.get("DETECTORSTATUS").unwrap(), "1");
    }

    #[test]
    fn recording_fixes_depth_and_format() {
        let mut s = Settings::new(SigShape::new(256, 256), "0.77".into(), Some((1, 2)));
        assert_eq!(s.get("FILEFORMAT").unwrap(), "2");
        assert_eq!(s.set("COUNTERDEPTH", "12"), status::RANGE);
        assert_eq!(s.set("FILEFORMAT", "0"), status::RANGE);
        assert_eq!(s.set("COUNTERDEPTH", "1"), status::OK);
    }

    #[test]
    fn quad_cannot_be_raw_from_the_synthetic_source() {
        let mut s = Settings::new(SigShape::new(512, 512), "t".into(), None);
        assert_eq!(s.set("FILEFORMAT", "2"), status::RANGE);
    }
}
