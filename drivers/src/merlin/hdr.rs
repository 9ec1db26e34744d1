//! The acquisition header (`HDR` message, protocols.md §1.5), sent once per acquisition on
//! the data port when the detector is armed, and stored as the `.hdr` file beside a `.mib`
//! recording.
//!
//! Text is Latin-1 (it may hold `µ`), lines end in `\n` (maybe `\r\n`); the first line is
//! `HDR,`; each other line is `Key:<TAB>Value`, values padded with spaces; a line starting
//! with `End` closes the block and spaces pad the message to a fixed size. Lines that do not
//! parse are skipped (and listed in [`MerlinHeader::warnings`]), as LiberTEM does.

use super::mpx::escape_bytes;
use super::mq1::Layout;
use stemflow_core::NavShape;

/// Errors parsing an HDR message. The device is named by the caller.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum HdrError {
    /// The payload does not start with `HDR,`.
    #[error("acquisition header must start with `HDR,`, observed `{observed}`")]
    BadMagic {
        /// The first bytes seen, escaped.
        observed: String,
    },
    /// A required key is absent.
    #[error("acquisition header lacks the required key `{key}`")]
    MissingKey {
        /// The key (as written by Merlin).
        key: &'static str,
    },
    /// A required key's value does not parse.
    #[error("acquisition header key `{key}`: expected {expected}, observed `{observed}`")]
    BadValue {
        /// The key.
        key: &'static str,
        /// What the value must be.
        expected: &'static str,
        /// The value seen.
        observed: String,
    },
}

/// Key prefixes as Merlin writes them (software 0.67–1.6.1). Lookups match by prefix so the
/// parenthesised hints (`(Number)`, `(NX1, 2X2)`) may vary between versions.
mod keys {
    pub const FRAMES_IN_ACQUISITION: &str = "Frames in Acquisition";
    pub const FRAMES_PER_TRIGGER: &str = "Frames per Trigger";
    pub const COUNTER_DEPTH: &str = "Counter Depth";
    pub const ASSEMBLY_SIZE: &str = "Assembly Size";
    pub const CHIP_MODE: &str = "Chip Mode";
    pub const SOFTWARE_VERSION: &str = "Software Version";
    pub const SCAN_X: &str = "ScanX";
    pub const SCAN_Y: &str = "ScanY";
}

/// A parsed acquisition header: every key/value in order, plus typed accessors for what
/// stemflow uses.
#[derive(Clone, Debug, PartialEq)]
pub struct MerlinHeader {
    entries: Vec<(String, String)>,
    raw: String,
    warnings: Vec<String>,
    frames_in_acquisition: u64,
    frames_per_trigger: u64,
}

impl MerlinHeader {
    /// Parses an HDR payload (the MPX payload, or a `.hdr` file's bytes), starting `HDR,`.
    ///
    /// # Errors
    /// [`HdrError::BadMagic`]; [`HdrError::MissingKey`] / [`HdrError::BadValue`] for the two
    /// required keys, `Frames in Acquisition (Number)` and `Frames per Trigger (Number)`.
    pub fn parse(payload: &[u8]) -> Result<Self, HdrError> {
        if !payload.starts_with(b"HDR,") {
            return Err(HdrError::BadMagic {
                observed: escape_bytes(&payload[..payload.len().min(16)]),
            });
        }
        // Latin-1 maps each byte to the code point of the same value.
        let text: String = payload.iter().map(|b| char::from(*b)).collect();
        let raw = text
            .trim_end_matches(|c: char| c == '\0' || c.is_ascii_whitespace())
            .to_string();
        let mut entries = Vec::new();
        let mut warnings = Vec::new();
        for line in raw.lines().skip(1) {
            let line = line.trim_end_matches(['\r', '\0']);
            if line.starts_with("End") {
                break;
            }
            if line.trim().is_empty() {
                continue;
            }
            let split = line.split_once('\t').or_else(|| line.split_once(':'));
            match split {
                Some((k, v)) => {
                    let key = k.trim().trim_end_matches(':').trim_end().to_string();
                    entries.push((key, v.trim().to_string()));
                }
                None => warnings.push(format!("skipped unparsable header line `{line}`")),
            }
        }
        let mut header = Self {
            entries,
            raw,
            warnings,
            frames_in_acquisition: 0,
            frames_per_trigger: 0,
        };
        header.frames_in_acquisition = header.required_u64(keys::FRAMES_IN_ACQUISITION)?;
        header.frames_per_trigger = header.required_u64(keys::FRAMES_PER_TRIGGER)?;
        for key in [keys::COUNTER_DEPTH, keys::SCAN_X, keys::SCAN_Y] {
            if let Some(v) = header.get_prefix(key)
                && v.parse::<u64>().is_err()
            {
                let w = format!("header key `{key}` has non-numeric value `{v}`; ignored");
                header.warnings.push(w);
            }
        }
        Ok(header)
    }

    fn required_u64(&self, key: &'static str) -> Result<u64, HdrError> {
        let v = self.get_prefix(key).ok_or(HdrError::MissingKey { key })?;
        v.parse().map_err(|_| HdrError::BadValue {
            key,
            expected: "a non-negative integer",
            observed: v.to_string(),
        })
    }

    /// The value of the first key equal to `key` (verbatim, without the trailing colon, e.g.
    /// `Frames in Acquisition (Number)`), trimmed.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of the first key starting with `prefix` (e.g. `Chip Mode` for
    /// `Chip Mode  (SPM, CSM, CM, CSCM)`).
    pub fn get_prefix(&self, prefix: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.as_str())
    }

    /// Every key/value pair in the order sent (keys without the trailing colon, values
    /// trimmed).
    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }

    /// The header text as sent (Latin-1 decoded), without the trailing padding.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// Lines that were skipped and values that did not parse, for logs.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// `Frames in Acquisition (Number)`: frames the detector will send; 0 = continuous
    /// (never done; ends by stop). Required.
    pub fn frames_in_acquisition(&self) -> u64 {
        self.frames_in_acquisition
    }

    /// True when the acquisition is continuous (`Frames in Acquisition` is 0).
    pub fn is_continuous(&self) -> bool {
        self.frames_in_acquisition == 0
    }

    /// `Frames per Trigger (Number)`: frames per trigger edge (1 = pixel trigger). Required.
    pub fn frames_per_trigger(&self) -> u64 {
        self.frames_per_trigger
    }

    /// `Counter Depth (number)` in bits (1, 6, 12, 24), if present and numeric.
    pub fn counter_depth(&self) -> Option<u32> {
        self.get_prefix(keys::COUNTER_DEPTH)?.parse().ok()
    }

    /// `Assembly Size (NX1, 2X2)` as sent, trimmed (`1x1`, `2x2`, `2x2G`).
    pub fn assembly_size(&self) -> Option<&str> {
        self.get_prefix(keys::ASSEMBLY_SIZE)
    }

    /// The assembly size as a [`Layout`], if it is a known token.
    pub fn layout(&self) -> Option<Layout> {
        Layout::parse(self.assembly_size()?)
    }

    /// `ScanX`: scan positions per row (newer software only).
    pub fn scan_x(&self) -> Option<u64> {
        self.get(keys::SCAN_X)?.parse().ok()
    }

    /// `ScanY`: scan rows (newer software only).
    pub fn scan_y(&self) -> Option<u64> {
        self.get(keys::SCAN_Y)?.parse().ok()
    }

    /// The scan grid `(ScanY, ScanX)` when both are present and non-zero (§1.5).
    pub fn nav_shape(&self) -> Option<NavShape> {
        let rows = usize::try_from(self.scan_y()?).ok()?;
        let cols = usize::try_from(self.scan_x()?).ok()?;
        (rows > 0 && cols > 0).then(|| NavShape::new(rows, cols))
    }

    /// `Chip Mode  (SPM, CSM, CM, CSCM)` as sent (`SPM`, …).
    pub fn chip_mode(&self) -> Option<&str> {
        self.get_prefix(keys::CHIP_MODE)
    }

    /// `Software Version` of the Merlin software (`0.77`, `1.6.1`).
    pub fn software_version(&self) -> Option<&str> {
        self.get_prefix(keys::SOFTWARE_VERSION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut b = b"HDR,\t\n\
Time and Date Stamp (day, mnth, yr, hr, min, s):\t15/04/2021 14:44:14\n\
Chip ID:\tW556_B4,W556_J2,W556_M5,W556_G4\n\
Assembly Size (NX1, 2X2):\t  2x2G\n\
Chip Mode  (SPM, CSM, CM, CSCM):\tSPM\n\
Counter Depth (number):\t12\n\
Frames in Acquisition (Number):\t16384\n\
Frames per Trigger (Number):\t128\n\
Temperature (\xb5C):\t43\r\n\
Software Version:\t1.6.1\n\
ScanX:\t28\n\
ScanY:\t20\n\
this line has no separator\n\
End\t"
            .to_vec();
        b.resize(2048, b' ');
        b
    }

    #[test]
    fn parses_typed_values_and_keeps_all_entries_in_order() {
        let h = MerlinHeader::parse(&sample()).unwrap();
        assert_eq!(h.frames_in_acquisition(), 16384);
        assert!(!h.is_continuous());
        assert_eq!(h.frames_per_trigger(), 128);
        assert_eq!(h.counter_depth(), Some(12));
        assert_eq!(h.assembly_size(), Some("2x2G"));
        assert_eq!(h.layout(), Some(Layout::QuadWithGap));
        assert_eq!(h.chip_mode(), Some("SPM"));
        assert_eq!(h.software_version(), Some("1.6.1"));
        assert_eq!((h.scan_x(), h.scan_y()), (Some(28), Some(20)));
        assert_eq!(h.nav_shape(), Some(NavShape::new(20, 28)));
        assert_eq!(h.entries().len(), 11);
        assert_eq!(
            h.entries()[0].0,
            "Time and Date Stamp (day, mnth, yr, hr, min, s)"
        );
        assert_eq!(h.entries()[0].1, "15/04/2021 14:44:14");
        assert_eq!(h.get("Chip ID"), Some("W556_B4,W556_J2,W556_M5,W556_G4"));
        // Latin-1 µ and a CRLF line end survive.
        assert_eq!(h.get("Temperature (µC)"), Some("43"));
        assert_eq!(h.warnings().len(), 1);
        assert!(
            h.raw().ends_with("End"),
            "padding trimmed: {:?}",
            &h.raw()[h.raw().len() - 5..]
        );
    }

    #[test]
    fn continuous_and_colon_split_and_missing_scan() {
        let h = MerlinHeader::parse(
            b"HDR,\nFrames in Acquisition (Number):0\nFrames per Trigger (Number): 64\nEnd\t",
        )
        .unwrap();
        assert!(h.is_continuous());
        assert_eq!(h.frames_per_trigger(), 64);
        assert_eq!(h.nav_shape(), None);
        assert_eq!(h.counter_depth(), None);
    }

    #[test]
    fn required_keys_and_magic_are_enforced() {
        assert!(matches!(
            MerlinHeader::parse(b"MQ1,000001"),
            Err(HdrError::BadMagic { .. })
        ));
        assert_eq!(
            MerlinHeader::parse(b"HDR,\nFrames per Trigger (Number):\t1\nEnd"),
            Err(HdrError::MissingKey {
                key: "Frames in Acquisition"
            })
        );
        let err = MerlinHeader::parse(
            b"HDR,\nFrames in Acquisition (Number):\tmany\nFrames per Trigger (Number):\t1\nEnd",
        )
        .unwrap_err();
        assert!(err.to_string().contains("`many`"), "{err}");
    }

    #[test]
    fn lines_after_end_are_ignored() {
        let h = MerlinHeader::parse(
            b"HDR,\nFrames in Acquisition (Number):\t3\nFrames per Trigger (Number):\t1\nEnd\t\nScanX:\t5\n",
        )
        .unwrap();
        assert_eq!(h.scan_x(), None);
    }
}
