//! A burst waveform generator as the pixel clock of a scan, over SCPI (TCP and a serial
//! port), driving the simulated Merlin's trigger input: the SCPI transport (framing, error
//! queue after every setting, deadlines), the pixel-clock driver (burst count = positions,
//! period = dwell, read-back), and the whole instrument — orchestrator, Merlin driver,
//! pixel clock as the scan engine — acquiring one frame per pulse.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};
use stemflow_actors::orchestrator::ExitStatus;
use stemflow_actors::supervisor::InstrumentSpec;
use stemflow_core::detector::Detector;
use stemflow_core::devices::{
    DeviceError, ScanEngine, ScanSettings, TriggerOutput, TriggerReceiver, trigger_line,
};
use stemflow_core::{NavShape, SigShape};
use stemflow_drivers::merlin::{MerlinDetector, MerlinDetectorConfig};
use stemflow_drivers::scpi::{PixelClock, PixelClockConfig, ScpiAddress, ScpiClient, ScpiError};
use stemflow_simulators::merlin::{MerlinSim, MerlinSimConfig, MerlinSource, Pacing};
use stemflow_simulators::pixel_clock::{PixelClockFaults, PixelClockSim, PixelClockSimConfig};
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

/// Collects pulses until `n` arrived or `deadline` passed.
fn pulses(rx: &TriggerReceiver, n: u64, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    let mut got = 0;
    while got < n {
        match rx.wait_until(deadline) {
            Some(_) => got += 1,
            None => break,
        }
    }
    got
}

fn tcp(sim: &PixelClockSim) -> ScpiAddress {
    ScpiAddress::Tcp(sim.addr().to_string())
}

#[test]
fn pixel_clock_over_tcp_fires_one_pulse_per_scan_position() {
    let (out, rx) = trigger_line();
    let sim = PixelClockSim::start(PixelClockSimConfig {
        output: Some(out),
        ..PixelClockSimConfig::default()
    })
    .expect("sim");
    let mut clock = PixelClock::connect(PixelClockConfig::new(tcp(&sim))).expect("connect");
    assert!(
        clock.identity().contains("Simulated Pulse Generator"),
        "{}",
        clock.identity()
    );
    let read_back = clock
        .configure(&scan(8, 8, 200e-6, 0.0, TriggerOutput::Pixel))
        .expect("configure");
    assert!(
        (read_back.dwell_time_s - 200e-6).abs() < 1e-12,
        "{read_back:?}"
    );
    assert_eq!(rx.clear(), 0, "pulses before start");
    let t0 = Instant::now();
    clock.start().expect("start");
    assert_eq!(pulses(&rx, 64, Duration::from_secs(5)), 64, "pulses");
    // 64 pulses 200 µs apart take at least 63 periods.
    assert!(
        t0.elapsed() >= Duration::from_micros(63 * 200),
        "{:?}",
        t0.elapsed()
    );
    assert!(
        rx.wait(Duration::from_millis(100)).is_none(),
        "a 65th pulse"
    );
    std::thread::sleep(Duration::from_millis(20));
    let st = clock.status().expect("status");
    assert_eq!((st.running, st.positions_done), (false, 64));
    clock.stop().expect("stop");
    let stats = sim.stats();
    assert_eq!(
        (stats.bursts, stats.pulses, stats.errors),
        (1, 64, 0),
        "{stats:?}"
    );
}

#[test]
fn line_trigger_gives_one_pulse_per_line_at_the_line_period() {
    let (out, rx) = trigger_line();
    let sim = PixelClockSim::start(PixelClockSimConfig {
        output: Some(out),
        ..PixelClockSimConfig::default()
    })
    .expect("sim");
    let mut clock = PixelClock::connect(PixelClockConfig::new(tcp(&sim))).expect("connect");
    clock
        .configure(&scan(4, 16, 100e-6, 400e-6, TriggerOutput::Line))
        .expect("configure");
    let mut client =
        ScpiClient::connect("check", &tcp(&sim), Duration::from_secs(2)).expect("client");
    let period: f64 = client
        .query("SOUR1:FUNC:PULS:PER?")
        .expect("period")
        .parse()
        .expect("number");
    assert!((period - 2.0e-3).abs() < 1e-12, "line period {period}");
    assert_eq!(
        client
            .query("BURS:NCYC?")
            .expect("ncyc")
            .parse::<f64>()
            .ok(),
        Some(4.0)
    );
    clock.start().expect("start");
    assert_eq!(pulses(&rx, 4, Duration::from_secs(5)), 4);
    assert!(rx.wait(Duration::from_millis(50)).is_none());
}

#[test]
fn pixel_trigger_with_flyback_is_refused_before_anything_is_sent() {
    let sim = PixelClockSim::start(PixelClockSimConfig::default()).expect("sim");
    let mut clock = PixelClock::connect(PixelClockConfig::new(tcp(&sim))).expect("connect");
    let before = sim.stats().messages;
    let err = clock
        .configure(&scan(4, 4, 1e-4, 1e-4, TriggerOutput::Pixel))
        .expect_err("flyback with a pixel clock");
    assert!(
        matches!(&err, DeviceError::Rejected { setting, .. } if setting == "flyback"),
        "{err}"
    );
    assert_eq!(sim.stats().messages, before);
}

#[test]
fn a_period_that_does_not_take_is_an_error_naming_requested_and_actual() {
    let sim = PixelClockSim::start(PixelClockSimConfig {
        faults: PixelClockFaults {
            period_does_not_take: true,
            ..PixelClockFaults::default()
        },
        ..PixelClockSimConfig::default()
    })
    .expect("sim");
    let mut clock = PixelClock::connect(PixelClockConfig::new(tcp(&sim))).expect("connect");
    let err = clock
        .configure(&scan(4, 4, 250e-6, 0.0, TriggerOutput::Pixel))
        .expect_err("period did not take");
    let text = err.to_string();
    assert!(
        text.contains("PULS:PER") && text.contains("2.5") && text.contains("1.0"),
        "{text}"
    );
    assert!(text.contains("pixel clock @ 127.0.0.1:"), "{text}");
}

#[test]
fn refused_settings_and_silent_instruments_are_errors_with_the_details() {
    let sim = PixelClockSim::start(PixelClockSimConfig {
        faults: PixelClockFaults {
            silent_after_queries: Some(4),
            ..PixelClockFaults::default()
        },
        ..PixelClockSimConfig::default()
    })
    .expect("sim");
    let mut c = ScpiClient::connect("awg", &tcp(&sim), Duration::from_millis(300)).expect("client");
    // queries 1 and 2: the error queue after the setting (the error, then "no error").
    match c.set("SOUR1:BURS:NCYC 0") {
        Err(ScpiError::Refused {
            command,
            code,
            message,
            more,
            ..
        }) => {
            assert_eq!(
                (command.as_str(), code, message.as_str(), more),
                ("SOUR1:BURS:NCYC 0", -222, "Data out of range", 0)
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // queries 3 and 4 answer, the 5th never does.
    assert_eq!(c.query("*OPC?").expect("opc"), "1");
    assert_eq!(c.errors().expect("errors"), Vec::new());
    let t0 = Instant::now();
    match c.query("*IDN?") {
        Err(e @ ScpiError::Timeout { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("awg @ 127.0.0.1:") && text.contains("*IDN?"),
                "{text}"
            );
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
}

/// IEEE 488.2 definite-length arbitrary blocks, including bytes that look like terminators.
#[test]
fn definite_length_block_responses() {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        let (s, _) = listener.accept().expect("accept");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut w = s;
        let mut line = String::new();
        r.read_line(&mut line).expect("query");
        assert_eq!(line, "DATA:WAV?\n");
        w.write_all(b"#209ab\ncd\nefg\n").expect("reply");
        line.clear();
        r.read_line(&mut line).expect("query");
        w.write_all(b"#0oops\n").expect("reply");
    });
    let mut c = ScpiClient::connect(
        "dso",
        &ScpiAddress::Tcp(addr.to_string()),
        Duration::from_secs(2),
    )
    .expect("client");
    assert_eq!(c.query_block("DATA:WAV?").expect("block"), b"ab\ncd\nefg");
    assert!(matches!(
        c.query_block("DATA:WAV?"),
        Err(ScpiError::Reply { .. })
    ));
    server.join().expect("server");
}

#[test]
fn connect_failure_names_the_instrument_within_its_deadline() {
    // A port nobody listens on: a connect error naming the instrument, within the deadline.
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = free.local_addr().expect("addr");
    drop(free);
    let t0 = Instant::now();
    let err = ScpiClient::connect(
        "scan generator",
        &ScpiAddress::Tcp(addr.to_string()),
        Duration::from_millis(500),
    )
    .expect_err("nothing listens");
    assert!(
        err.to_string()
            .starts_with(&format!("scan generator @ {addr}")),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[cfg(unix)]
#[test]
fn pixel_clock_over_a_serial_port() {
    let (out, rx) = trigger_line();
    let sim = PixelClockSim::start(PixelClockSimConfig {
        output: Some(out),
        pty: true,
        ..PixelClockSimConfig::default()
    })
    .expect("sim");
    let path = sim.pty_path().expect("pty").to_string();
    let mut cfg = PixelClockConfig::new(ScpiAddress::Serial {
        path: path.clone(),
        baud: 115_200,
    });
    cfg.name = "awg".into();
    let mut clock = PixelClock::connect(cfg).expect("connect over the pty");
    assert_eq!(clock.name(), format!("awg @ serial:{path}@115200"));
    clock
        .configure(&scan(4, 4, 100e-6, 0.0, TriggerOutput::Pixel))
        .expect("configure");
    clock.start().expect("start");
    assert_eq!(pulses(&rx, 16, Duration::from_secs(5)), 16);
}

/// The instrument: the orchestrator configures the pixel clock as the scan engine and the
/// Merlin (external trigger), confirms the arm by the HDR, starts the clock; every pulse
/// gives one frame.
#[test]
fn merlin_clocked_by_the_pixel_clock_through_the_orchestrator() {
    let (out, trigger_in) = trigger_line();
    let clock_sim = PixelClockSim::start(PixelClockSimConfig {
        output: Some(out),
        ..PixelClockSimConfig::default()
    })
    .expect("pixel clock sim");
    let nav = NavShape::new(6, 8);
    let sig = SigShape::new(64, 64);
    let mut cfg = MerlinSimConfig::new(MerlinSource::Synthetic {
        specimen: Specimen::builder().disk_radius_px(8.0).build(),
        nav_shape: nav,
        sig_shape: sig,
        seed: 5,
    });
    cfg.host = "127.0.0.1".parse().expect("ip");
    cfg.pacing = Pacing::AsFastAsPossible;
    cfg.trigger_input = Some(trigger_in);
    let merlin = MerlinSim::start(cfg).expect("merlin sim");

    let det = MerlinDetectorConfig::new(merlin.control_addr(), merlin.data_addr());
    let clock_addr = tcp(&clock_sim);
    let spec = InstrumentSpec {
        detector: Arc::new(move || {
            MerlinDetector::connect(det.clone()).map(|d| Box::new(d) as Box<dyn Detector>)
        }),
        scan: Some(Arc::new(move || {
            PixelClock::connect(PixelClockConfig::new(clock_addr.clone()))
                .map(|c| Box::new(c) as Box<dyn ScanEngine>)
        })),
        microscope: None,
        recording: Arc::new(|_| Err("no recording in this test".into())),
    };
    let req = common::instrument::external_trigger_request(
        scan(nav.rows, nav.cols, 200e-6, 0.0, TriggerOutput::Pixel),
        "pixel clock",
    );
    let record = common::instrument::run(spec, vec![req])
        .pop()
        .expect("one result");
    let record = record.unwrap_or_else(|f| panic!("acquisition failed: {}", f.error));
    assert_eq!(record.exit_status, ExitStatus::Completed, "{record:?}");
    assert_eq!(
        (
            record.frames_expected,
            record.frames_received,
            record.frames_lost,
            record.frames_processed
        ),
        (48, 48, 0, 48)
    );
    assert_eq!(clock_sim.stats().pulses, 48);
    assert_eq!(merlin.stats().frames_sent, 48);
    let scan_md = record.metadata.scan.expect("scan settings read back");
    assert!((scan_md.dwell_time_s - 200e-6).abs() < 1e-12);
}
