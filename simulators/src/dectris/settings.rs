//! The SIMPLON parameter store behind the REST API (protocols.md §2.2, §2.3): detector,
//! stream, file-writer and monitor configuration, with types, access modes, ranges, allowed
//! values and the consequences a DCU applies (setting `count_time` may raise `frame_time`
//! and the reverse), so that read-back differs from what was asked where a DCU's would.

use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// Shortest frame time the simulated detector accepts, s (100 kHz; ARINA's fastest mode is
/// about 120 kHz [?]).
pub(crate) const MIN_FRAME_TIME_S: f64 = 1e-5;
/// Longest count or frame time accepted, s.
pub(crate) const MAX_TIME_S: f64 = 3600.0;
/// Largest `nimages` / `ntrigger` (LiberTEM-live #40 emulates continuous mode with ~2·10⁹).
pub(crate) const MAX_COUNT: u64 = u32::MAX as u64;

/// Read-only or read-write, the `access_mode` field of a GET answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    R,
    Rw,
}

/// One parameter: its value and what the API says about it.
#[derive(Clone, Debug)]
pub(crate) struct Param {
    pub(crate) value: Value,
    pub(crate) access: Access,
    pub(crate) unit: Option<&'static str>,
    pub(crate) min: Option<f64>,
    pub(crate) max: Option<f64>,
    pub(crate) allowed: Option<Vec<String>>,
    /// Sent in the detector configuration part of the global header.
    pub(crate) in_header: bool,
}

impl Param {
    fn rw(value: Value) -> Self {
        Self {
            value,
            access: Access::Rw,
            unit: None,
            min: None,
            max: None,
            allowed: None,
            in_header: true,
        }
    }
    fn r(value: Value) -> Self {
        Self {
            access: Access::R,
            ..Self::rw(value)
        }
    }
    fn unit(mut self, u: &'static str) -> Self {
        self.unit = Some(u);
        self
    }
    fn range(mut self, min: f64, max: f64) -> Self {
        self.min = Some(min);
        self.max = Some(max);
        self
    }
    fn allowed(mut self, v: &[&str]) -> Self {
        self.allowed = Some(v.iter().map(|s| s.to_string()).collect());
        self
    }
    fn api_only(mut self) -> Self {
        self.in_header = false;
        self
    }

    fn value_type(&self) -> &'static str {
        match &self.value {
            Value::Bool(_) => "bool",
            Value::Number(n) if n.is_f64() => "float",
            Value::Number(_) => "uint",
            Value::String(_) => "string",
            Value::Array(_) => "list",
            _ => "darray",
        }
    }

    /// The JSON object a GET answers (§2.2): `value`, `value_type`, `access_mode` and the
    /// optional `unit`, `min`, `max`, `allowed_values`.
    pub(crate) fn describe(&self) -> Value {
        let mut m = Map::new();
        m.insert("value".into(), self.value.clone());
        m.insert("value_type".into(), self.value_type().into());
        m.insert(
            "access_mode".into(),
            match self.access {
                Access::R => "r",
                Access::Rw => "rw",
            }
            .into(),
        );
        if let Some(u) = self.unit {
            m.insert("unit".into(), u.into());
        }
        if let Some(v) = self.min {
            m.insert("min".into(), json!(v));
        }
        if let Some(v) = self.max {
            m.insert("max".into(), json!(v));
        }
        if let Some(a) = &self.allowed {
            m.insert("allowed_values".into(), json!(a));
        }
        Value::Object(m)
    }
}

/// Why a PUT was refused; the REST layer answers 400 (404 for `Unknown`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PutError {
    Unknown(String),
    Refused(String),
}

/// A group of parameters (one `<module>/api/<version>/config`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Params {
    pub(crate) map: BTreeMap<String, Param>,
}

impl Params {
    pub(crate) fn get(&self, key: &str) -> Option<&Param> {
        self.map.get(key)
    }

    fn set_raw(&mut self, key: &str, p: Param) {
        self.map.insert(key.to_string(), p);
    }

    /// The value of `key` as f64 (0 when absent or not a number).
    pub(crate) fn f64(&self, key: &str) -> f64 {
        self.map
            .get(key)
            .and_then(|p| p.value.as_f64())
            .unwrap_or(0.0)
    }

    /// The value of `key` as u64 (0 when absent or not an unsigned integer).
    pub(crate) fn u64(&self, key: &str) -> u64 {
        self.map
            .get(key)
            .and_then(|p| p.value.as_u64())
            .unwrap_or(0)
    }

    /// The value of `key` as a string ("" when absent or not a string).
    pub(crate) fn str(&self, key: &str) -> &str {
        self.map
            .get(key)
            .and_then(|p| p.value.as_str())
            .unwrap_or("")
    }

    /// Sets `key` to `value` after checking access, type, range and allowed values; returns
    /// the names of the parameters that changed as a consequence (the key itself first).
    pub(crate) fn put(&mut self, key: &str, value: &Value) -> Result<Vec<String>, PutError> {
        let p = self
            .map
            .get(key)
            .ok_or_else(|| PutError::Unknown(format!("no parameter `{key}`")))?;
        if p.access == Access::R {
            return Err(PutError::Refused(format!("`{key}` is read-only")));
        }
        let v = coerce(key, &p.value, value)?;
        if let (Some(n), Some(min), Some(max)) = (v.as_f64(), p.min, p.max)
            && !(min..=max).contains(&n)
        {
            return Err(PutError::Refused(format!(
                "`{key}` = {n} is outside {min}..={max}"
            )));
        }
        if let (Some(s), Some(allowed)) = (v.as_str(), &p.allowed)
            && !allowed.iter().any(|a| a == s)
        {
            return Err(PutError::Refused(format!(
                "`{key}` = {s:?} is not one of {allowed:?}"
            )));
        }
        let mut changed = vec![key.to_string()];
        if let Some(p) = self.map.get_mut(key) {
            p.value = v;
        }
        // The DCU keeps frame_time ≥ count_time + readout by moving the other one (§2.3).
        let readout = self.f64("detector_readout_time");
        match key {
            "count_time" => {
                let need = self.f64("count_time") + readout;
                if self.f64("frame_time") < need {
                    self.force("frame_time", json!(need));
                    changed.push("frame_time".into());
                }
            }
            "frame_time" => {
                let most = self.f64("frame_time") - readout;
                if self.f64("count_time") > most {
                    self.force("count_time", json!(most));
                    changed.push("count_time".into());
                }
            }
            _ => {}
        }
        Ok(changed)
    }

    fn force(&mut self, key: &str, v: Value) {
        if let Some(p) = self.map.get_mut(key) {
            p.value = v;
        }
    }

    /// Sets a value without checks (the simulator's own bookkeeping, e.g. the collection date).
    pub(crate) fn force_value(&mut self, key: &str, v: Value) {
        self.force(key, v);
    }

    /// The flat `{key: value}` object of the header's detector configuration part (§2.4).
    pub(crate) fn header_config(&self) -> Value {
        Value::Object(
            self.map
                .iter()
                .filter(|(_, p)| p.in_header)
                .map(|(k, p)| (k.clone(), p.value.clone()))
                .collect(),
        )
    }

    /// Every key (`GET .../config/keys`).
    pub(crate) fn keys(&self) -> Value {
        json!(self.map.keys().collect::<Vec<_>>())
    }
}

/// Checks `new` against the JSON type of `current` (integers for unsigned parameters, any
/// number for floats, booleans, strings).
fn coerce(key: &str, current: &Value, new: &Value) -> Result<Value, PutError> {
    let wrong = |want: &str| PutError::Refused(format!("`{key}` wants {want}, got {new}"));
    match current {
        Value::Bool(_) => new
            .as_bool()
            .map(Value::Bool)
            .ok_or_else(|| wrong("a boolean")),
        Value::Number(n) if n.is_f64() => new
            .as_f64()
            .filter(|f| f.is_finite())
            .map(|f| json!(f))
            .ok_or_else(|| wrong("a number")),
        Value::Number(_) => new
            .as_u64()
            .or_else(|| {
                new.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .map(|u| json!(u))
            .ok_or_else(|| wrong("an unsigned integer")),
        Value::String(_) => new
            .as_str()
            .map(|s| Value::String(s.to_string()))
            .ok_or_else(|| wrong("a string")),
        _ => Err(PutError::Refused(format!("`{key}` cannot be set"))),
    }
}

/// What a frame source tells the parameter store about the detector.
#[derive(Clone, Debug)]
pub(crate) struct DetectorFacts {
    /// Width and height, pixels.
    pub(crate) x: usize,
    pub(crate) y: usize,
    /// Bits per pixel of the images (8, 16, 32).
    pub(crate) bit_depth: u32,
    /// Compression values the source can produce; the first is the initial one.
    pub(crate) compressions: Vec<String>,
    /// A recorded detector configuration whose values win over the defaults.
    pub(crate) recorded: Option<Map<String, Value>>,
    pub(crate) description: String,
}

/// The detector configuration of a fresh simulator.
pub(crate) fn detector_config(f: &DetectorFacts) -> Params {
    let mut p = Params::default();
    let comp: Vec<&str> = f.compressions.iter().map(String::as_str).collect();
    let s = |v: &str| Value::String(v.to_string());
    p.set_raw("auto_summation", Param::rw(json!(true)));
    p.set_raw(
        "beam_center_x",
        Param::rw(json!(f.x as f64 / 2.0)).unit("pixel"),
    );
    p.set_raw(
        "beam_center_y",
        Param::rw(json!(f.y as f64 / 2.0)).unit("pixel"),
    );
    p.set_raw("bit_depth_image", Param::r(json!(f.bit_depth)).unit("bit"));
    p.set_raw(
        "bit_depth_readout",
        Param::r(json!(f.bit_depth)).unit("bit"),
    );
    p.set_raw(
        "compression",
        Param::rw(s(comp.first().copied().unwrap_or("bslz4"))).allowed(&comp),
    );
    p.set_raw(
        "count_time",
        Param::rw(json!(0.0009999))
            .unit("s")
            .range(MIN_FRAME_TIME_S / 2.0, MAX_TIME_S),
    );
    p.set_raw("countrate_correction_applied", Param::rw(json!(true)));
    p.set_raw(
        "data_collection_date",
        Param::r(s("2026-01-01T00:00:00.000+00:00")),
    );
    p.set_raw("description", Param::r(s(&f.description)));
    p.set_raw("detector_number", Param::r(s("E-01-0000")));
    p.set_raw("detector_readout_time", Param::r(json!(1e-7)).unit("s"));
    p.set_raw("eiger_fw_version", Param::r(s("release-2020.2.2")));
    p.set_raw("flatfield_correction_applied", Param::rw(json!(true)));
    p.set_raw(
        "frame_time",
        Param::rw(json!(0.001))
            .unit("s")
            .range(MIN_FRAME_TIME_S, MAX_TIME_S),
    );
    p.set_raw("nimages", Param::rw(json!(1)).range(1.0, MAX_COUNT as f64));
    p.set_raw("ntrigger", Param::rw(json!(1)).range(1.0, MAX_COUNT as f64));
    p.set_raw("number_of_excluded_pixels", Param::r(json!(0)));
    p.set_raw("pixel_mask_applied", Param::rw(json!(true)));
    p.set_raw("roi_mode", Param::rw(s("")).allowed(&["", "disabled"]));
    p.set_raw("sensor_material", Param::r(s("Si")));
    p.set_raw("sensor_thickness", Param::r(json!(0.00045)).unit("m"));
    p.set_raw("software_version", Param::r(s("1.8.0")));
    p.set_raw(
        "threshold_energy",
        Param::rw(json!(4020.5)).unit("eV").range(1000.0, 100_000.0),
    );
    p.set_raw(
        "trigger_mode",
        Param::rw(s("exte")).allowed(&["ints", "inte", "exts", "exte"]),
    );
    p.set_raw("x_pixel_size", Param::r(json!(7.5e-5)).unit("m"));
    p.set_raw("x_pixels_in_detector", Param::r(json!(f.x)).unit("pixel"));
    p.set_raw("y_pixel_size", Param::r(json!(7.5e-5)).unit("m"));
    p.set_raw("y_pixels_in_detector", Param::r(json!(f.y)).unit("pixel"));
    // API-only parameters LiberTEM-live sets (§2.3); not part of the basic header.
    p.set_raw("mask_to_zero", Param::rw(json!(false)).api_only());
    p.set_raw(
        "roi_y_size",
        Param::rw(json!(f.y)).api_only().range(4.0, f.y as f64),
    );
    p.set_raw(
        "roi_bit_depth",
        Param::rw(json!(f.bit_depth))
            .api_only()
            .allowed_u(&[8, 16, 32]),
    );
    p.set_raw(
        "photon_energy",
        Param::rw(json!(8041.0))
            .api_only()
            .unit("eV")
            .range(1000.0, 300_000.0),
    );
    if let Some(rec) = &f.recorded {
        for (k, v) in rec {
            match p.map.get_mut(k) {
                // Recorded values of known parameters keep their access and limits; the
                // shape and compression are facts of the source and already set.
                Some(param) if !matches!(k.as_str(), "compression") => param.value = v.clone(),
                Some(_) => {}
                None => p.set_raw(k, Param::r(v.clone())),
            }
        }
    }
    p
}

impl Param {
    /// Integer allowed values are not expressible as strings; enforce them as a range and
    /// document them in `allowed_values`.
    fn allowed_u(mut self, v: &[u64]) -> Self {
        self.allowed = None;
        self.min = v.iter().min().map(|&m| m as f64);
        self.max = v.iter().max().map(|&m| m as f64);
        self
    }
}

/// Stream configuration (`/stream/api/1.8.0/config`, §2.3).
pub(crate) fn stream_config() -> Params {
    let mut p = Params::default();
    let s = |v: &str| Value::String(v.to_string());
    p.set_raw(
        "mode",
        Param::rw(s("enabled")).allowed(&["enabled", "disabled"]),
    );
    p.set_raw(
        "header_detail",
        Param::rw(s("basic")).allowed(&["all", "basic", "none"]),
    );
    // Stream v2 (CBOR) is not simulated: only `legacy` is accepted.
    p.set_raw("format", Param::rw(s("legacy")).allowed(&["legacy"]));
    p.set_raw("header_appendix", Param::rw(s("")));
    p.set_raw("image_appendix", Param::rw(s("")));
    p
}

/// File-writer configuration (`/filewriter/api/1.8.0/config`, §2.3): stored and read back;
/// the simulator writes no files.
pub(crate) fn filewriter_config() -> Params {
    let mut p = Params::default();
    let s = |v: &str| Value::String(v.to_string());
    p.set_raw(
        "mode",
        Param::rw(s("disabled")).allowed(&["enabled", "disabled"]),
    );
    p.set_raw("name_pattern", Param::rw(s("series_$id")));
    p.set_raw(
        "nimages_per_file",
        Param::rw(json!(1000)).range(0.0, MAX_COUNT as f64),
    );
    p.set_raw("compression_enabled", Param::rw(json!(true)));
    p
}

/// Monitor configuration (`/monitor/api/1.8.0/config`): stored only.
pub(crate) fn monitor_config() -> Params {
    let mut p = Params::default();
    p.set_raw(
        "mode",
        Param::rw(Value::String("disabled".into())).allowed(&["enabled", "disabled"]),
    );
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> DetectorFacts {
        DetectorFacts {
            x: 256,
            y: 256,
            bit_depth: 16,
            compressions: vec!["bslz4".into(), "none".into()],
            recorded: None,
            description: "test".into(),
        }
    }

    #[test]
    fn count_time_raises_frame_time_and_frame_time_lowers_count_time() {
        let mut p = detector_config(&facts());
        let changed = p.put("count_time", &json!(0.01)).unwrap();
        assert_eq!(changed, ["count_time", "frame_time"]);
        assert!((p.f64("frame_time") - (0.01 + 1e-7)).abs() < 1e-12);
        let changed = p.put("frame_time", &json!(0.002)).unwrap();
        assert_eq!(changed, ["frame_time", "count_time"]);
        assert!((p.f64("count_time") - (0.002 - 1e-7)).abs() < 1e-12);
    }

    #[test]
    fn puts_are_checked() {
        let mut p = detector_config(&facts());
        assert!(matches!(
            p.put("nope", &json!(1)),
            Err(PutError::Unknown(_))
        ));
        assert!(matches!(
            p.put("x_pixels_in_detector", &json!(1)),
            Err(PutError::Refused(_))
        ));
        assert!(matches!(
            p.put("nimages", &json!(0)),
            Err(PutError::Refused(_))
        ));
        assert!(matches!(
            p.put("nimages", &json!(-3)),
            Err(PutError::Refused(_))
        ));
        assert!(matches!(
            p.put("nimages", &json!("a")),
            Err(PutError::Refused(_))
        ));
        assert!(matches!(
            p.put("trigger_mode", &json!("extg")),
            Err(PutError::Refused(_))
        ));
        assert!(matches!(
            p.put("compression", &json!("lz4")),
            Err(PutError::Refused(_))
        ));
        assert_eq!(p.put("nimages", &json!(16.0)).unwrap(), ["nimages"]);
        assert_eq!(p.u64("nimages"), 16);
        assert_eq!(p.describe_value("nimages"), json!(16));
    }

    impl Params {
        fn describe_value(&self, k: &str) -> Value {
            self.get(k).unwrap().describe()["value"].clone()
        }
    }
}
