//! Scan generators and microscope columns driven through command maps (the device's config
//! file), over TCP and a serial port, against their simulators — and the failures users
//! meet: a scan generator that stops answering mid-scan, a microscope setting that does not
//! take.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stemflow_actors::supervisor::InstrumentSpec;
use stemflow_core::detector::Detector;
use stemflow_core::devices::{
    DeviceError, Microscope, MicroscopeSettings, ScanEngine, ScanSettings, TriggerOutput,
    trigger_line,
};
use stemflow_core::{NavShape, SigShape};
use stemflow_drivers::merlin::{MerlinDetector, MerlinDetectorConfig};
use stemflow_drivers::scpi::{
    MappedMicroscope, MappedMicroscopeConfig, MappedScanEngine, MappedScanEngineConfig,
    ScanPattern, ScpiAddress,
};
use stemflow_simulators::merlin::{MerlinSim, MerlinSimConfig, MerlinSource, Pacing};
use stemflow_simulators::scpi_devices::{
    ColumnFaults, ColumnSim, ColumnSimConfig, ScanGeneratorFaults, ScanGeneratorSim,
    ScanGeneratorSimConfig,
};
use stemflow_simulators::specimen::Specimen;

fn scan(rows: usize, cols: usize, dwell_s: f64, flyback_s: f64, t: TriggerOutput) -> ScanSettings {
    ScanSettings {
        nav_shape: NavShape::new(rows, cols),
        dwell_time_s: dwell_s,
        flyback_s,
        trigger: t,
        region_origin: None,
    }
}

fn wait_idle(engine: &mut MappedScanEngine, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let st = engine.status().expect("status");
        if !st.running {
            return st.positions_done;
        }
        assert!(Instant::now() < deadline, "scan still running: {st:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn scan_generator_over_tcp_scans_the_grid_and_fires_per_pixel() {
    let (out, rx) = trigger_line();
    let sim = ScanGeneratorSim::start(ScanGeneratorSimConfig {
        output: Some(out),
        ..ScanGeneratorSimConfig::default()
    })
    .expect("sim");
    let mut cfg = MappedScanEngineConfig::new(ScpiAddress::Tcp(sim.addr().to_string()));
    cfg.pattern = ScanPattern::Serpentine;
    let mut engine = MappedScanEngine::connect(cfg).expect("connect");
    assert!(engine.identity().contains("Simulated Scan Generator"));
    let rb = engine
        .configure(&scan(4, 8, 100e-6, 300e-6, TriggerOutput::Pixel))
        .expect("configure");
    assert_eq!((rb.nav_shape.rows, rb.nav_shape.cols), (4, 8));
    assert!((rb.dwell_time_s - 100e-6).abs() < 1e-12 && (rb.flyback_s - 300e-6).abs() < 1e-12);
    let t0 = Instant::now();
    engine.start().expect("start");
    assert_eq!(wait_idle(&mut engine, Duration::from_secs(5)), 32);
    // 3 full lines of 8 × 100 µs + 300 µs, then 7 dwells, at least.
    assert!(t0.elapsed() >= Duration::from_micros(3 * 1100 + 700));
    assert_eq!(rx.clear(), 32, "one pulse per pixel");
    assert_eq!(sim.pulses(), 32);
}

#[cfg(unix)]
#[test]
fn scan_generator_over_a_serial_port_with_line_trigger_and_sub_region() {
    let (out, rx) = trigger_line();
    let sim = ScanGeneratorSim::start(ScanGeneratorSimConfig {
        output: Some(out),
        pty: true,
        ..ScanGeneratorSimConfig::default()
    })
    .expect("sim");
    let mut cfg = MappedScanEngineConfig::new(ScpiAddress::Serial {
        path: sim.pty_path().expect("pty").into(),
        baud: 115_200,
    });
    cfg.region_origin = Some((16, 32));
    let mut engine = MappedScanEngine::connect(cfg).expect("connect over the pty");
    let rb = engine
        .configure(&scan(5, 6, 50e-6, 100e-6, TriggerOutput::Line))
        .expect("configure");
    assert_eq!(rb.region_origin, Some((16, 32)));
    // A rescan's own region wins over the configured one.
    let mut rescan = scan(5, 6, 50e-6, 100e-6, TriggerOutput::Line);
    rescan.region_origin = Some((2, 3));
    assert_eq!(
        engine.configure(&rescan).expect("configure").region_origin,
        Some((2, 3))
    );
    engine.start().expect("start");
    assert_eq!(wait_idle(&mut engine, Duration::from_secs(5)), 30);
    assert_eq!(rx.clear(), 5, "one pulse per line");
}

/// A custom position list (e.g. a spiral or a sparse pattern) replaces the grid walk: the
/// generator visits each position once, a pulse at each; a list of the wrong length is
/// refused before the scan, naming both counts.
#[test]
fn scan_generator_follows_a_custom_position_list() {
    let (out, rx) = trigger_line();
    let sim = ScanGeneratorSim::start(ScanGeneratorSimConfig {
        output: Some(out),
        ..ScanGeneratorSimConfig::default()
    })
    .expect("sim");
    let list: Vec<(usize, usize)> = (0..12).map(|i| ((i * 7) % 5, (i * 3) % 11)).collect();
    let mut cfg = MappedScanEngineConfig::new(ScpiAddress::Tcp(sim.addr().to_string()));
    cfg.positions = Some(list);
    let mut engine = MappedScanEngine::connect(cfg.clone()).expect("connect");
    engine
        .configure(&scan(3, 4, 100e-6, 0.0, TriggerOutput::Pixel))
        .expect("configure");
    let mut check = stemflow_drivers::scpi::ScpiClient::connect(
        "check",
        &ScpiAddress::Tcp(sim.addr().to_string()),
        Duration::from_secs(2),
    )
    .expect("client");
    assert_eq!(check.query("SCAN:POSITIONS:COUNT?").expect("count"), "12");
    engine.start().expect("start");
    assert_eq!(wait_idle(&mut engine, Duration::from_secs(5)), 12);
    assert_eq!(rx.clear(), 12);
    let mut engine = MappedScanEngine::connect(cfg).expect("connect");
    let err = engine
        .configure(&scan(4, 4, 100e-6, 0.0, TriggerOutput::Pixel))
        .expect_err("12 positions for 16");
    assert!(
        err.to_string().contains("16 positions") && err.to_string().contains("12 in the list"),
        "{err}"
    );
}

#[test]
fn a_site_command_map_that_names_an_unknown_operation_is_refused() {
    let sim = ScanGeneratorSim::start(ScanGeneratorSimConfig::default()).expect("sim");
    let mut cfg = MappedScanEngineConfig::new(ScpiAddress::Tcp(sim.addr().to_string()));
    cfg.commands = BTreeMap::from([("set_dwel".to_string(), "DW {dwell_s}".to_string())]);
    let err = MappedScanEngine::connect(cfg).expect_err("typo in the map");
    assert!(err.to_string().contains("`set_dwel`"), "{err}");
    // A map whose status reply does not fit what the device answers.
    let mut cfg = MappedScanEngineConfig::new(ScpiAddress::Tcp(sim.addr().to_string()));
    cfg.commands = BTreeMap::from([(
        "status.reply".to_string(),
        "{state};{positions}".to_string(),
    )]);
    let mut engine = MappedScanEngine::connect(cfg).expect("connect");
    let err = engine.status().expect_err("reply does not fit");
    assert!(err.to_string().contains("IDLE,0"), "{err}");
}

/// The scan generator stops answering mid-scan: the acquisition ends in a fault whose error
/// names the scan engine, the frames that did arrive are counted, and nothing hangs.
#[test]
fn scan_generator_that_stops_responding_mid_scan_faults_the_acquisition() {
    let (out, trigger_in) = trigger_line();
    let scan_sim = ScanGeneratorSim::start(ScanGeneratorSimConfig {
        output: Some(out),
        faults: ScanGeneratorFaults {
            hang_after_positions: Some(10),
        },
        ..ScanGeneratorSimConfig::default()
    })
    .expect("scan sim");
    let nav = NavShape::new(4, 8);
    let mut mcfg = MerlinSimConfig::new(MerlinSource::Synthetic {
        specimen: Specimen::builder().disk_radius_px(6.0).build(),
        nav_shape: nav,
        sig_shape: SigShape::new(32, 32),
        seed: 9,
    });
    mcfg.host = "127.0.0.1".parse().expect("ip");
    mcfg.pacing = Pacing::AsFastAsPossible;
    mcfg.trigger_input = Some(trigger_in);
    let merlin = MerlinSim::start(mcfg).expect("merlin sim");
    let mut det = MerlinDetectorConfig::new(merlin.control_addr(), merlin.data_addr());
    det.frame_timeout = Duration::from_secs(1);
    let mut scfg = MappedScanEngineConfig::new(ScpiAddress::Tcp(scan_sim.addr().to_string()));
    scfg.timeout = Duration::from_millis(500);
    let spec = InstrumentSpec {
        detector: Arc::new(move || {
            MerlinDetector::connect(det.clone()).map(|d| Box::new(d) as Box<dyn Detector>)
        }),
        scan: Some(Arc::new(move || {
            MappedScanEngine::connect(scfg.clone()).map(|e| Box::new(e) as Box<dyn ScanEngine>)
        })),
        microscope: None,
        recording: Arc::new(|_| Err("no recording in this test".into())),
    };
    let req = common::instrument::external_trigger_request(
        scan(nav.rows, nav.cols, 500e-6, 0.0, TriggerOutput::Pixel),
        "hanging scan engine",
    );
    let t0 = Instant::now();
    let result = common::instrument::run(spec, vec![req])
        .pop()
        .expect("result");
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );
    let failure = match result {
        Ok(r) => panic!("the acquisition succeeded with a hung scan engine: {r:?}"),
        Err(f) => f,
    };
    let text = failure.error.to_string();
    assert!(text.contains("scan engine @ 127.0.0.1:"), "{text}");
    assert_eq!(failure.record.frames_expected, 32, "{:?}", failure.record);
    assert!(
        failure.record.frames_received <= 10,
        "{} frames after the scan engine hung at 10",
        failure.record.frames_received
    );
}

#[test]
fn microscope_settings_are_applied_read_back_and_stored() {
    let sim = ColumnSim::start(ColumnSimConfig::default()).expect("sim");
    let mut cfg = MappedMicroscopeConfig::new(ScpiAddress::Tcp(sim.addr().to_string()));
    cfg.settle = Duration::from_millis(10);
    let mut m = MappedMicroscope::connect(cfg).expect("connect");
    let state = m
        .apply(&MicroscopeSettings {
            high_tension_v: Some(300e3),
            camera_length_m: Some(0.25),
            convergence_angle_rad: Some(21.4e-3),
            magnification: Some(2.5e6),
            defocus_m: Some(-50e-9),
            beam_blanked: Some(true),
        })
        .expect("apply");
    assert_eq!(state.high_tension_v, 300e3);
    assert_eq!(state.camera_length_m, 0.25);
    assert_eq!(state.convergence_angle_rad, 21.4e-3);
    assert_eq!(state.magnification, 2.5e6);
    assert_eq!(state.defocus_m, -50e-9);
    assert!(state.beam_blanked);
    assert_eq!(m.read_state().expect("read"), state);
    // The field of view is read only where the map asks for it.
    assert_eq!(state.field_of_view_m, None);
    let mut cfg = MappedMicroscopeConfig::new(ScpiAddress::Tcp(sim.addr().to_string()));
    cfg.commands = BTreeMap::from([("get_field_of_view".to_string(), "COL:FOV?".to_string())]);
    let fov = MappedMicroscope::connect(cfg)
        .expect("connect")
        .read_state()
        .expect("read with the field of view")
        .field_of_view_m
        .expect("a field of view");
    assert!((fov - 0.064 / 2.5e6).abs() < 1e-15, "{fov}");
    sim.set_beam_current(12e-12);
    assert_eq!(m.beam_current_a().expect("current"), Some(12e-12));
    // Out of range: the column's error queue says so, naming the command.
    let err = m
        .apply(&MicroscopeSettings {
            high_tension_v: Some(1e6),
            ..MicroscopeSettings::default()
        })
        .expect_err("1 MV");
    let text = err.to_string();
    assert!(text.contains("COL:HT") && text.contains("-222"), "{text}");
}

#[test]
fn a_microscope_setting_that_does_not_take_names_setting_requested_and_actual() {
    let sim = ColumnSim::start(ColumnSimConfig {
        faults: ColumnFaults {
            setting_does_not_take: Some("DEF".into()),
        },
        ..ColumnSimConfig::default()
    })
    .expect("sim");
    let mut cfg = MappedMicroscopeConfig::new(ScpiAddress::Tcp(sim.addr().to_string()));
    cfg.settle = Duration::from_millis(10);
    let mut m = MappedMicroscope::connect(cfg).expect("connect");
    let err = m
        .apply(&MicroscopeSettings {
            defocus_m: Some(-100e-9),
            ..MicroscopeSettings::default()
        })
        .expect_err("defocus did not take");
    match &err {
        DeviceError::Rejected {
            setting,
            requested,
            actual,
            ..
        } => {
            assert_eq!(setting, "defocus");
            assert!(requested.contains("-1e-7"), "{requested}");
            assert!(actual.starts_with("0e0"), "{actual}");
        }
        other => panic!("expected Rejected, got {other}"),
    }
    assert!(err.to_string().contains("microscope @ 127.0.0.1:"), "{err}");
}

/// Runs `stemflow ARGS` with a deadline; returns success and stdout + stderr.
fn stemflow(args: &[&str], scratch: &std::path::Path) -> (bool, String) {
    let log = scratch.join("output.log");
    let file = std::fs::File::create(&log).expect("log file");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_stemflow"));
    cmd.args(args)
        .stdout(file.try_clone().expect("clone"))
        .stderr(file);
    let mut child = common::process::ChildGuard::spawn("stemflow", &mut cmd);
    let status = child.wait_timeout(Duration::from_secs(120));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    match status {
        Some(s) => (s.success(), text),
        None => panic!("stemflow {args:?} still running after 120 s:\n{text}"),
    }
}

/// The profiles that put SCPI devices into the simulated instrument: each device's
/// simulator runs in-process and the real drivers talk to it over TCP — a pixel clock
/// triggering the Merlin, or a command-map scan generator triggering the DECTRIS detector,
/// with a command-map microscope column whose read-back state lands in the recording.
#[test]
fn profiles_with_scpi_devices_run_the_whole_scan() {
    for (profile, detector_line, scan_line) in [
        (
            "simulated-pixel-clock.toml",
            "Merlin simulator",
            "pixel clock simulator 127.0.0.1:",
        ),
        (
            "simulated-dectris-scan-generator.toml",
            "DECTRIS simulator",
            "scan generator simulator 127.0.0.1:",
        ),
    ] {
        let dir = common::scratch::ScratchDir::new("scpi-profile");
        let out = dir.path().join("out");
        let path = format!("{}/config/profiles/{profile}", env!("CARGO_MANIFEST_DIR"));
        let (ok, text) = stemflow(
            &[
                "--profile",
                &path,
                "--nav-shape",
                "10x12",
                "--out",
                out.to_str().expect("utf-8"),
            ],
            dir.path(),
        );
        assert!(ok, "{profile}:\n{text}");
        for needle in [
            detector_line,
            scan_line,
            "column simulator 127.0.0.1:",
            "120 expected, 120 received, 0 lost, 0 damaged, 120 processed",
        ] {
            assert!(
                text.contains(needle),
                "{profile}: no `{needle}` in:\n{text}"
            );
        }
        let rec =
            stemflow_recording::reader::open_recording(out.join("recording.hspy")).expect("h5");
        let meta = rec.metadata().expect("metadata");
        let m = meta.microscope.expect("column state read back");
        assert_eq!(m.high_tension_v, 200e3, "{profile}");
        assert_eq!(m.camera_length_m, 0.1, "{profile}");
        let scan = meta.scan.expect("scan read back");
        assert_eq!(
            (scan.nav_shape.rows, scan.nav_shape.cols),
            (10, 12),
            "{profile}"
        );
    }
}

/// A site profile names a device that is not there: the error names the device and the
/// address, within the deadline, and nothing is left running.
#[test]
fn a_profile_whose_scan_engine_does_not_answer_fails_clearly() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = free.local_addr().expect("addr");
    drop(free);
    let dir = common::scratch::ScratchDir::new("scpi-profile-missing");
    let profile = dir.path().join("site.toml");
    let text = stemflow_config::SIMULATED_PROFILE.to_string()
        + &format!(
            "\n[devices.scan_engine]\nkind = \"pixel-clock\"\naddress = \"{addr}\"\ntimeout_s = 0.5\n"
        );
    std::fs::write(&profile, text).expect("profile");
    let t0 = Instant::now();
    let (ok, out) = stemflow(
        &[
            "--profile",
            profile.to_str().expect("utf-8"),
            "--nav-shape",
            "4x4",
            "--out",
            dir.path().join("out").to_str().expect("utf-8"),
        ],
        dir.path(),
    );
    assert!(!ok, "ran without its scan engine:\n{out}");
    assert!(out.contains(&format!("pixel clock @ {addr}")), "{out}");
    assert!(t0.elapsed() < Duration::from_secs(30));
}
