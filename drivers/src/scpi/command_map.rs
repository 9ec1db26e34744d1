//! Command maps: the text a device expects for each operation, from the device's config file,
//! so a site adapts stemflow to its own scan generator or microscope without code.
//!
//! A map is a table of operation name → template. Templates hold `{field}` placeholders that
//! are filled with the operation's values (numbers in plain decimal or exponent form). A
//! query's response is parsed with the template stored under `<operation>.reply`, e.g.
//! `get_shape = "SCAN:SHAPE?"` and `"get_shape.reply" = "{rows},{cols}"`. Every operation a
//! driver uses has a default (the map our simulators speak); a config file overrides any of
//! them, and names an unknown operation only at its peril: that is an error naming the key.

use super::{ScpiAddress, ScpiClient, ScpiError};
use std::collections::BTreeMap;
use std::time::Duration;
use stemflow_core::devices::DeviceError;

/// Command-map errors; each names the map, the operation and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// A key that no operation of this device has.
    #[error("{map}: unknown operation `{key}` (known: {known})")]
    UnknownKey {
        /// The map (e.g. `scan engine command map`).
        map: String,
        /// The offending key.
        key: String,
        /// The operations the device has.
        known: String,
    },
    /// A template whose braces do not pair up, or a placeholder with no value.
    #[error("{map}: operation `{op}`: template `{template}`: {problem}")]
    Template {
        /// The map.
        map: String,
        /// The operation.
        op: String,
        /// The template.
        template: String,
        /// What is wrong.
        problem: String,
    },
    /// A response that does not fit its reply template.
    #[error("{map}: response `{reply}` to `{op}` does not match `{template}`")]
    Reply {
        /// The map.
        map: String,
        /// The operation.
        op: String,
        /// The reply template.
        template: String,
        /// The response.
        reply: String,
    },
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(String),
}

fn pieces(template: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if let Some(close) = rest[..open].find('}') {
            return Err(format!("unmatched `}}` at byte {close}"));
        }
        if open > 0 {
            out.push(Piece::Text(rest[..open].to_string()));
        }
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| "unclosed `{`".to_string())?;
        let name = &after[..close];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad placeholder `{{{name}}}`"));
        }
        if matches!(out.last(), Some(Piece::Field(_))) {
            return Err("two placeholders with nothing between them".into());
        }
        out.push(Piece::Field(name.to_string()));
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err("unmatched `}`".into());
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest.to_string()));
    }
    Ok(out)
}

/// Operation name → template, validated against the device's operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandMap {
    name: String,
    templates: BTreeMap<String, String>,
}

impl CommandMap {
    /// `defaults` (every operation the device has) overridden by `overrides` (from a config
    /// file).
    ///
    /// # Errors
    /// [`MapError::UnknownKey`] for an override no operation has; [`MapError::Template`] for
    /// a template that does not parse.
    pub fn new(
        name: &str,
        defaults: &[(&str, &str)],
        overrides: &BTreeMap<String, String>,
    ) -> Result<Self, MapError> {
        let mut templates: BTreeMap<String, String> = defaults
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (k, v) in overrides {
            if !templates.contains_key(k) {
                return Err(MapError::UnknownKey {
                    map: name.to_string(),
                    key: k.clone(),
                    known: defaults
                        .iter()
                        .map(|(k, _)| *k)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            templates.insert(k.clone(), v.clone());
        }
        for (op, t) in &templates {
            pieces(t).map_err(|problem| MapError::Template {
                map: name.to_string(),
                op: op.clone(),
                template: t.clone(),
                problem,
            })?;
        }
        Ok(Self {
            name: name.to_string(),
            templates,
        })
    }

    /// Whether the map has a non-empty template for `op` (an empty template disables an
    /// optional operation, e.g. a device without sub-region scans).
    pub fn has(&self, op: &str) -> bool {
        self.templates.get(op).is_some_and(|t| !t.is_empty())
    }

    fn template(&self, op: &str) -> Result<&str, MapError> {
        self.templates
            .get(op)
            .map(String::as_str)
            .ok_or_else(|| MapError::UnknownKey {
                map: self.name.clone(),
                key: op.to_string(),
                known: self
                    .templates
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The program message for `op` with `fields` filled in.
    ///
    /// # Errors
    /// [`MapError::Template`] when a placeholder has no value.
    pub fn command(&self, op: &str, fields: &[(&str, String)]) -> Result<String, MapError> {
        let t = self.template(op)?;
        let mut out = String::new();
        for p in pieces(t).unwrap_or_default() {
            match p {
                Piece::Text(s) => out.push_str(&s),
                Piece::Field(f) => {
                    let v =
                        fields
                            .iter()
                            .find(|(k, _)| *k == f)
                            .ok_or_else(|| MapError::Template {
                                map: self.name.clone(),
                                op: op.to_string(),
                                template: t.to_string(),
                                problem: format!("no value for `{{{f}}}`"),
                            })?;
                    out.push_str(&v.1);
                }
            }
        }
        Ok(out)
    }

    /// Parses `reply` with the template `<op>.reply` (the whole reply when there is none,
    /// as field `value`). Fields are matched left to right, each up to the next literal.
    ///
    /// # Errors
    /// [`MapError::Reply`] when the reply does not fit.
    pub fn parse(&self, op: &str, reply: &str) -> Result<BTreeMap<String, String>, MapError> {
        let key = format!("{op}.reply");
        let t = self.templates.get(&key).map_or("{value}", String::as_str);
        let bad = || MapError::Reply {
            map: self.name.clone(),
            op: op.to_string(),
            template: t.to_string(),
            reply: reply.to_string(),
        };
        let ps = pieces(t).map_err(|_| bad())?;
        let mut out = BTreeMap::new();
        let mut rest = reply.trim();
        let mut i = 0;
        while i < ps.len() {
            match &ps[i] {
                Piece::Text(s) => rest = rest.strip_prefix(s.as_str()).ok_or_else(bad)?,
                Piece::Field(f) => {
                    let end = match ps.get(i + 1) {
                        Some(Piece::Text(next)) => rest.find(next.as_str()).ok_or_else(bad)?,
                        _ => rest.len(),
                    };
                    out.insert(f.clone(), rest[..end].trim().to_string());
                    rest = &rest[end..];
                }
            }
            i += 1;
        }
        if !rest.is_empty() {
            return Err(bad());
        }
        Ok(out)
    }

    /// As [`parse`](Self::parse), then one field as a number.
    ///
    /// # Errors
    /// [`MapError::Reply`] when the field is missing or not a number.
    pub fn parse_f64(&self, op: &str, reply: &str, field: &str) -> Result<f64, MapError> {
        let fields = self.parse(op, reply)?;
        fields
            .get(field)
            .and_then(|v| v.trim_start_matches('+').parse::<f64>().ok())
            .ok_or_else(|| MapError::Reply {
                map: self.name.clone(),
                op: op.to_string(),
                template: format!("a number in `{{{field}}}`"),
                reply: reply.to_string(),
            })
    }
}

/// A map error as the device's protocol error.
pub(crate) fn map_err(device: &str, e: MapError) -> DeviceError {
    DeviceError::Protocol {
        device: device.to_string(),
        expected: "a command map that fits the device".into(),
        observed: e.to_string(),
    }
}

/// Validates `defaults` + `overrides`, connects to `address` as `name`, uses the map's
/// `errors` query as the error queue (none when empty), identifies the device with
/// `identify` (empty text when the map has none) and clears stale errors. Shared by the
/// command-map scan engine and microscope.
pub(crate) fn connect_mapped(
    name: &str,
    address: &ScpiAddress,
    timeout: Duration,
    defaults: &[(&str, &str)],
    overrides: &BTreeMap<String, String>,
) -> Result<(ScpiClient, CommandMap, String), DeviceError> {
    let device = format!("{name} @ {address}");
    let map = CommandMap::new(&format!("{name} command map"), defaults, overrides)
        .map_err(|e| map_err(&device, e))?;
    let mut client =
        ScpiClient::connect(name, address, timeout).map_err(ScpiError::into_device_error)?;
    client.set_error_query(
        map.has("errors")
            .then(|| map.command("errors", &[]).unwrap_or_default()),
    );
    let identity = if map.has("identify") {
        let q = map
            .command("identify", &[])
            .map_err(|e| map_err(&device, e))?;
        client.query(&q).map_err(ScpiError::into_device_error)?
    } else {
        String::new()
    };
    client.errors().map_err(ScpiError::into_device_error)?;
    Ok((client, map, identity))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(overrides: &[(&str, &str)]) -> Result<CommandMap, MapError> {
        let o = overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CommandMap::new(
            "test map",
            &[
                ("set_shape", "SCAN:SHAPE {rows},{cols}"),
                ("get_shape", "SCAN:SHAPE?"),
                ("get_shape.reply", "{rows},{cols}"),
                ("status", "STAT?"),
            ],
            &o,
        )
    }

    #[test]
    fn commands_and_replies_round_trip() {
        let m = map(&[]).expect("map");
        assert_eq!(
            m.command("set_shape", &[("rows", "4".into()), ("cols", "8".into())]),
            Ok("SCAN:SHAPE 4,8".into())
        );
        let f = m.parse("get_shape", " 4, 8 ").expect("reply");
        assert_eq!((f["rows"].as_str(), f["cols"].as_str()), ("4", "8"));
        assert_eq!(m.parse("status", "RUN").expect("reply")["value"], "RUN");
        assert_eq!(m.parse_f64("get_shape", "4,8", "cols"), Ok(8.0));
    }

    #[test]
    fn overrides_adapt_to_another_dialect() {
        let m = map(&[
            ("set_shape", "RASTER {cols} {rows}"),
            ("get_shape.reply", "W={cols};H={rows}"),
        ])
        .expect("map");
        assert_eq!(
            m.command("set_shape", &[("rows", "4".into()), ("cols", "8".into())]),
            Ok("RASTER 8 4".into())
        );
        assert_eq!(m.parse_f64("get_shape", "W=8;H=4", "rows"), Ok(4.0));
        assert!(matches!(
            m.parse("get_shape", "8,4"),
            Err(MapError::Reply { .. })
        ));
    }

    #[test]
    fn bad_maps_are_errors_naming_the_key() {
        let e = map(&[("set_shap", "X")]).expect_err("typo");
        assert!(e.to_string().contains("`set_shap`"), "{e}");
        let e = map(&[("set_shape", "SHAPE {rows")]).expect_err("brace");
        assert!(
            e.to_string().contains("set_shape") && e.to_string().contains("unclosed"),
            "{e}"
        );
        let m = map(&[]).expect("map");
        let e = m
            .command("set_shape", &[("rows", "1".into())])
            .expect_err("missing field");
        assert!(e.to_string().contains("{cols}"), "{e}");
    }
}
