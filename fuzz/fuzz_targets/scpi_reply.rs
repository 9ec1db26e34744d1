//! Replies of SCPI-style instruments (scan engine, microscope) parsed through their
//! command maps' reply templates: every default operation, and the numeric fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use stemflow_drivers::scpi::CommandMap;
use stemflow_drivers::scpi::microscope::MICROSCOPE_DEFAULT_MAP;
use stemflow_drivers::scpi::scan_engine::SCAN_ENGINE_DEFAULT_MAP;

/// The two default maps with their operations, built once.
fn maps() -> &'static [(CommandMap, Vec<&'static str>)] {
    static MAPS: OnceLock<Vec<(CommandMap, Vec<&'static str>)>> = OnceLock::new();
    MAPS.get_or_init(|| {
        [
            ("scan engine", SCAN_ENGINE_DEFAULT_MAP),
            ("microscope", MICROSCOPE_DEFAULT_MAP),
        ]
        .into_iter()
        .map(|(name, defaults)| {
            let map = CommandMap::new(name, defaults, &BTreeMap::new()).expect("the default map");
            (map, defaults.iter().map(|(op, _)| *op).collect())
        })
        .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let reply = String::from_utf8_lossy(data);
    for (map, ops) in maps() {
        for op in ops {
            if let Ok(fields) = map.parse(op, &reply) {
                for field in fields.keys() {
                    let _ = map.parse_f64(op, &reply, field);
                }
            }
        }
    }
});
