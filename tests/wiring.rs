//! Wrong wiring: the scan engine scans but its trigger cable is not connected, so the
//! detector never receives a trigger. The acquisition's deadline expires with an error that
//! names the detector and the scan engine and gives the frames expected and received; the
//! instrument returns to Idle and takes the next acquisition.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};
use stemflow_actors::supervisor::InstrumentSpec;
use stemflow_core::detector::Detector;
use stemflow_core::devices::{ScanEngine, ScanSettings, TriggerOutput, trigger_line};
use stemflow_core::{NavShape, SigShape};
use stemflow_drivers::merlin::{MerlinDetector, MerlinDetectorConfig};
use stemflow_simulators::merlin::{MerlinSim, MerlinSimConfig, MerlinSource, Pacing};
use stemflow_simulators::scan::{ScanEngineSim, ScanFaults};
use stemflow_simulators::specimen::Specimen;

#[test]
fn detector_that_never_receives_triggers_faults_and_the_instrument_recovers() {
    let (out, trigger_in) = trigger_line();
    let nav = NavShape::new(4, 6);
    let mut cfg = MerlinSimConfig::new(MerlinSource::Synthetic {
        specimen: Specimen::builder().disk_radius_px(6.0).build(),
        nav_shape: nav,
        sig_shape: SigShape::new(32, 32),
        seed: 4,
    });
    cfg.host = "127.0.0.1".parse().expect("ip");
    cfg.pacing = Pacing::AsFastAsPossible;
    cfg.trigger_input = Some(trigger_in);
    let merlin = MerlinSim::start(cfg).expect("merlin sim");
    let mut det = MerlinDetectorConfig::new(merlin.control_addr(), merlin.data_addr());
    det.first_frame_timeout = Duration::from_secs(1);
    det.frame_timeout = Duration::from_secs(1);
    let spec = InstrumentSpec {
        detector: Arc::new(move || {
            MerlinDetector::connect(det.clone()).map(|d| Box::new(d) as Box<dyn Detector>)
        }),
        scan: Some(Arc::new(move || {
            Ok(Box::new(ScanEngineSim::new(
                out.clone(),
                ScanFaults {
                    unplugged_trigger: true,
                    ..ScanFaults::default()
                },
            )) as Box<dyn ScanEngine>)
        })),
        microscope: None,
        recording: Arc::new(|_| Err("no recording in this test".into())),
    };
    let scan = ScanSettings {
        nav_shape: nav,
        dwell_time_s: 100e-6,
        flyback_s: 0.0,
        trigger: TriggerOutput::Pixel,
        region_origin: None,
    };
    let t0 = Instant::now();
    let results = common::instrument::run(
        spec,
        vec![
            common::instrument::external_trigger_request(scan.clone(), "first"),
            common::instrument::external_trigger_request(scan, "second"),
        ],
    );
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(results.len(), 2);
    for (i, r) in results.into_iter().enumerate() {
        let failure = match r {
            Ok(rec) => panic!("acquisition {i} succeeded without triggers: {rec:?}"),
            Err(f) => f,
        };
        let text = failure.error.to_string();
        let detector = format!("merlin @ {}", merlin.control_addr());
        assert!(text.contains(&detector), "acquisition {i}: {text}");
        assert!(text.contains("scan engine `"), "acquisition {i}: {text}");
        assert!(
            text.contains("0 of 24 frames received"),
            "acquisition {i}: {text}"
        );
        assert_eq!(
            (
                failure.record.frames_expected,
                failure.record.frames_received
            ),
            (24, 0),
            "acquisition {i}"
        );
    }
    // The second acquisition ran at all: the first one's fault was reset to Idle.
    assert_eq!(merlin.stats().acquisitions, 2);
    assert_eq!(merlin.stats().frames_sent, 0);
}
