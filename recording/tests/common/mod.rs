//! Synthetic acquisitions shared by the recording tests: deterministic pixels, tiles
//! delivered out of order across scan-row boundaries, lost and damaged frames, results and
//! metadata.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use stemflow_core::devices::{ScanSettings, TriggerOutput};
use stemflow_core::frame::{Tile, TileData};
use stemflow_core::metadata::{Calibration, CalibrationInputs, MicroscopeState, RunMetadata};
use stemflow_core::result::{BufferKind, ResultBuffer, ResultDType, UdfResults};
use stemflow_core::validity::{FrameStatus, FrameValidity};
use stemflow_core::{DType, NavShape, SigShape};

pub const NAV: NavShape = NavShape::new(5, 7);
pub const SIG: SigShape = SigShape::new(6, 4);
/// Frames never delivered.
pub const LOST: [u64; 2] = [9, 10];
/// Frame delivered damaged (zero pixels).
pub const DAMAGED: u64 = 20;
/// Tiles `(first, n)` in delivery order: out of order, several crossing scan rows (7 per
/// row), frames 9 and 10 missing, frame 20 alone (damaged).
pub const TILES: [(u64, usize); 6] = [(11, 9), (30, 5), (0, 4), (20, 1), (21, 9), (4, 5)];

/// A unique scratch file under the target directory (removed by the test when it passes).
pub fn scratch(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/recording-tests
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("recording-tests"))
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir.join(format!("{name}-{}.h5", std::process::id()))
}

/// Pixel `i` of frame `frame`, before truncation to the dtype; never 0 in u16 and wider.
pub fn pixel(frame: u64, i: usize) -> u64 {
    frame * 1009 + i as u64 * 7 + 1
}

/// The expected pixel as stored: zero for lost and damaged frames.
pub fn expected(frame: u64, i: usize, dtype: DType) -> u64 {
    if LOST.contains(&frame) || frame == DAMAGED {
        return 0;
    }
    let v = pixel(frame, i);
    match dtype {
        DType::U8 => v as u8 as u64,
        DType::U16 => v as u16 as u64,
        DType::U32 => v as u32 as u64,
        DType::U64 => v,
        DType::F32 => v as f32 as u64,
        DType::F64 => v as f64 as u64,
    }
}

/// Frames `first..first + n` with the synthetic pixels (zeros for the damaged frame).
pub fn tile(first: u64, n: usize, dtype: DType) -> Tile {
    let mut t = Tile::zeros(first, n, SIG, dtype);
    let len = SIG.len();
    for f in 0..n {
        let frame = first + f as u64;
        for i in 0..len {
            let v = if frame == DAMAGED { 0 } else { pixel(frame, i) };
            let k = f * len + i;
            match &mut t.data {
                TileData::U8(d) => d[k] = v as u8,
                TileData::U16(d) => d[k] = v as u16,
                TileData::U32(d) => d[k] = v as u32,
                TileData::U64(d) => d[k] = v,
                TileData::F32(d) => d[k] = v as f32,
                TileData::F64(d) => d[k] = v as f64,
            }
        }
    }
    t
}

/// The validity map of the synthetic acquisition.
pub fn validity() -> FrameValidity {
    let mut v = FrameValidity::new(NAV.len());
    for &(first, n) in &TILES {
        v.mark_range_received(first, n);
    }
    v.mark(DAMAGED, FrameStatus::Damaged);
    v
}

/// Results of three UDFs: a nav map with NaN at lost frames, CoM x/y, a sig sum and a
/// scalar; one UDF name has a `/` (stored as `_`).
pub fn results() -> Vec<UdfResults> {
    let nav_map: Vec<f64> = (0..NAV.len() as u64)
        .map(|f| {
            if LOST.contains(&f) {
                f64::NAN
            } else {
                f as f64 * 0.5
            }
        })
        .collect();
    vec![
        UdfResults {
            udf: "sum/sig".into(),
            params: String::new(),
            buffers: vec![
                ResultBuffer {
                    name: "intensity".into(),
                    kind: BufferKind::Nav,
                    shape: vec![NAV.rows, NAV.cols],
                    data: nav_map.clone(),
                    unit: "counts".into(),
                    dtype: Default::default(),
                },
                // An integer nav buffer: stored as uint16, NaN (lost frames) as 65535.
                ResultBuffer {
                    name: "hits".into(),
                    kind: BufferKind::Nav,
                    shape: vec![NAV.rows, NAV.cols],
                    data: nav_map.iter().map(|v| v * 4.0).collect(),
                    unit: "counts".into(),
                    dtype: ResultDType::U16,
                },
            ],
        },
        UdfResults {
            udf: "com".into(),
            params: r#"{"cx":1.5,"mask_radius":4.0}"#.into(),
            buffers: vec![
                ResultBuffer {
                    name: "x".into(),
                    kind: BufferKind::Nav,
                    shape: vec![NAV.rows, NAV.cols],
                    data: nav_map.iter().map(|v| -v).collect(),
                    unit: "pixels".into(),
                    dtype: Default::default(),
                },
                ResultBuffer {
                    name: "y".into(),
                    kind: BufferKind::Nav,
                    shape: vec![NAV.rows, NAV.cols],
                    data: nav_map,
                    unit: "pixels".into(),
                    dtype: Default::default(),
                },
            ],
        },
        UdfResults {
            udf: "sum".into(),
            params: String::new(),
            buffers: vec![
                ResultBuffer {
                    name: "frame_sum".into(),
                    kind: BufferKind::Sig,
                    shape: vec![SIG.rows, SIG.cols],
                    data: (0..SIG.len()).map(|i| i as f64).collect(),
                    unit: "counts".into(),
                    dtype: ResultDType::U64,
                },
                ResultBuffer {
                    name: "total".into(),
                    kind: BufferKind::Single,
                    shape: vec![1],
                    data: vec![12345.0],
                    unit: "counts".into(),
                    dtype: Default::default(),
                },
                ResultBuffer {
                    name: "frames_seen".into(),
                    kind: BufferKind::Single,
                    shape: vec![],
                    data: vec![33.0],
                    unit: "frames".into(),
                    dtype: Default::default(),
                },
            ],
        },
    ]
}

/// Read-back metadata with every part filled (values exactly representable in binary,
/// so they survive JSON unchanged).
pub fn metadata(dtype: DType) -> RunMetadata {
    let mut settings = BTreeMap::new();
    settings.insert("COUNTERDEPTH".to_string(), "12".to_string());
    settings.insert("ACQUISITIONTIME".to_string(), "0.5".to_string());
    settings.insert("TRIGGERSTART".to_string(), "1".to_string());
    let mut md = RunMetadata {
        detector: "merlin @ 127.0.0.1:6341".into(),
        detector_header: Some(
            "HDR,\t\nTime and Date Stamp (day, mnth, yr, hr, min, s):\t01/01/2025 00:00:00\nCounter Depth (number):\t12\nEnd\t"
                .into(),
        ),
        detector_settings: settings,
        microscope: Some(MicroscopeState {
            high_tension_v: 200_000.0,
            camera_length_m: 0.125,
            convergence_angle_rad: 0.0078125,
            magnification: 100_000.0,
            defocus_m: -0.0000000625,
            beam_blanked: false,
            field_of_view_m: None,
        }),
        scan: Some(ScanSettings {
            nav_shape: NAV,
            dwell_time_s: 0.0005,
            flyback_s: 0.0,
            trigger: TriggerOutput::Pixel,
            region_origin: None,
        }),
        nav_shape: Some(NAV),
        sig_shape: Some(SIG),
        dtype: Some(dtype),
        mode: "simulated".into(),
        software_version: stemflow_core::SOFTWARE_VERSION.into(),
        start_time: "2025-01-01T00:00:00Z".into(),
        stop_time: "2025-01-01T00:00:02Z".into(),
        calibration: None,
    };
    // Derived as the orchestrator derives it, with a scan step given by the user.
    md.calibration = Some(Calibration::derive(
        &md,
        &CalibrationInputs {
            scan_step_nm: Some(2.5),
            scan_rotation_deg: 0.0,
            pixel_pitch_um: None,
        },
    ));
    md
}

pub fn run_record() -> serde_json::Value {
    serde_json::json!({ "exit_status": "completed", "frames_expected": 35, "frames_lost": 2 })
}
