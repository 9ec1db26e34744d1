//! Supervision: a panic inside an actor during an acquisition ends the acquisition in Fault
//! naming the actor; the actor is restarted and the next acquisition succeeds.

use crossbeam_channel::bounded;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use stemflow_actors::orchestrator::{AcquisitionRequest, ExitStatus, Instrument, PipelineBuilder};
use stemflow_actors::processing::{LiveSnapshot, PipelineOutput};
use stemflow_actors::recorder::RecordingFactory;
use stemflow_actors::supervisor::{InstrumentSpec, Role};
use stemflow_core::detector::{
    AcquisitionEnd, ArmMode, ArmedAcquisition, Detector, DetectorSettings, DetectorTrigger,
};
use stemflow_core::devices::DeviceError;
use stemflow_core::frame::{DecodeError, FrameDecoder, PixelsMut, RawFrameRef, RawStack, Tile};
use stemflow_core::pool::Pooled;
use stemflow_core::state::AcqState;
use stemflow_core::validity::FrameValidity;
use stemflow_core::{DType, NavShape, SigShape};

/// Frames are 2×2 u8 pixels, sent as they are.
#[derive(Debug)]
struct Plain;
impl FrameDecoder for Plain {
    fn sig_shape(&self) -> SigShape {
        SigShape::new(2, 2)
    }
    fn dtype(&self) -> DType {
        DType::U8
    }
    fn decode_into(&self, payload: &[u8], out: PixelsMut<'_>) -> Result<(), DecodeError> {
        match out {
            PixelsMut::U8(o) if payload.len() == 4 => {
                o.copy_from_slice(payload);
                Ok(())
            }
            _ => Err(DecodeError::Malformed {
                device: "fake".into(),
                detail: "bad".into(),
            }),
        }
    }
}

/// A detector that streams `frames` frames, one every `period`, after arm.
struct FakeDetector {
    period: Duration,
}
impl Detector for FakeDetector {
    fn name(&self) -> &str {
        "fake detector"
    }
    fn configure(
        &mut self,
        _s: &DetectorSettings,
    ) -> Result<BTreeMap<String, String>, DeviceError> {
        Ok(BTreeMap::from([(
            "device".to_string(),
            "fake detector".to_string(),
        )]))
    }
    fn arm(&mut self, _m: ArmMode, _d: Duration) -> Result<ArmedAcquisition, DeviceError> {
        let (tx, rx) = bounded(4);
        let (etx, erx) = bounded(1);
        let period = self.period;
        std::thread::spawn(move || {
            let n = 16u64;
            let mut v = FrameValidity::new(n as usize);
            for i in 0..n {
                std::thread::sleep(period);
                let stack = RawStack {
                    first_frame: i,
                    frames: vec![RawFrameRef { offset: 0, len: 4 }],
                    buf: Pooled::unpooled(vec![i as u8; 4]),
                    decoder: Arc::new(Plain),
                    first_received: std::time::Instant::now(),
                };
                if tx.send(stack.into()).is_err() {
                    break;
                }
                v.mark_range_received(i, 1);
            }
            drop(tx);
            let received = v.received() as u64;
            let _ = etx.send(AcquisitionEnd {
                expected: n,
                received,
                lost: n - received,
                damaged: 0,
                validity: v,
                reason: "all frames".into(),
                error: None,
            });
        });
        Ok(ArmedAcquisition {
            header: Some("fake header".into()),
            expected_frames: 16,
            nav_shape: None,
            sig_shape: SigShape::new(2, 2),
            dtype: DType::U8,
            stacks: rx,
            end: erx,
        })
    }
    fn soft_trigger(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }
    fn disarm(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }
}

/// A pipeline that sums frames; panics on frame 5 when `panic_flag` is set (once).
fn pipeline(panic_flag: Arc<AtomicBool>) -> PipelineBuilder {
    Arc::new(move |inputs| {
        let panic_flag = Arc::clone(&panic_flag);
        Box::new(move |_cancel, snaps| {
            let mut n = 0u64;
            let mut tile = Tile::zeros(0, 0, inputs.sig_shape, inputs.dtype);
            for stack in inputs.stacks.iter() {
                let stack = stack.into_dense().ok_or("a dense stack")?;
                tile.decode_from(&stack).map_err(|e| e.to_string())?;
                if stack.first_frame == 5 && panic_flag.swap(false, Ordering::SeqCst) {
                    panic!("injected UDF panic at frame 5");
                }
                n += stack.len() as u64;
                let _ = snaps.send(Arc::new(LiveSnapshot {
                    frames_processed: n,
                    results: vec![],
                }));
            }
            Ok(PipelineOutput {
                results: vec![],
                frames_processed: n,
                damaged: vec![],
                cancelled: false,
                unprocessed_from: None,
                recording: None,
            })
        })
    })
}

fn spec(period: Duration) -> InstrumentSpec {
    let no_recording: RecordingFactory = Arc::new(|_| Err("no recording in this test".into()));
    InstrumentSpec {
        detector: Arc::new(move || Ok(Box::new(FakeDetector { period }) as Box<dyn Detector>)),
        scan: None,
        microscope: None,
        recording: no_recording,
    }
}

fn request(p: PipelineBuilder) -> AcquisitionRequest {
    AcquisitionRequest {
        mode: ArmMode::Active,
        detector: DetectorSettings {
            nav_shape: NavShape::new(4, 4),
            exposure_s: 1e-3,
            frame_time_s: 1e-3,
            trigger: DetectorTrigger::Internal,
            frames_per_trigger: 1,
            counter_depth: None,
            extra: BTreeMap::new(),
        },
        scan: None,
        microscope: None,
        arm_deadline: Duration::from_secs(2),
        deadline_margin: Duration::from_secs(5),
        output: None,
        pipeline: p,
        label: "test".into(),
        nav_from_detector: false,
        ready_hook: None,
        calibration: Default::default(),
    }
}

/// A panic in the processing pipeline (a UDF) ends the run in Fault naming `processing`;
/// the actor is restarted and the next run completes with every frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_panic_faults_run_and_next_run_succeeds() {
    let mut inst = Instrument::start(spec(Duration::from_millis(1)))
        .await
        .unwrap();
    let flag = Arc::new(AtomicBool::new(true));
    let before = inst.refs().processing.get_id();
    let err = inst
        .run_acquisition(request(pipeline(Arc::clone(&flag))))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("processing"), "{msg}");
    assert!(msg.contains("injected UDF panic"), "{msg}");
    assert_eq!(err.record.exit_status, ExitStatus::Fault);
    assert_eq!(inst.state(), AcqState::Idle);
    assert_ne!(
        inst.refs().processing.get_id(),
        before,
        "processing actor restarted"
    );
    let rec = inst.run_acquisition(request(pipeline(flag))).await.unwrap();
    assert_eq!(rec.exit_status, ExitStatus::Completed);
    assert_eq!(rec.frames_processed, 16);
    assert_eq!(rec.frames_received, 16);
    inst.shutdown().await;
}

/// A panic inside the detector actor mid-acquisition: Fault naming `detector`, restart,
/// next run fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detector_actor_panic_mid_run_is_supervised() {
    let mut inst = Instrument::start(spec(Duration::from_millis(30)))
        .await
        .unwrap();
    let flag = Arc::new(AtomicBool::new(false));
    let det = inst.refs().detector.clone();
    let mut changes = inst.state_changes();
    tokio::spawn(async move {
        while let Ok(c) = changes.recv().await {
            if c.to == AcqState::Running {
                tokio::time::sleep(Duration::from_millis(60)).await;
                let _ = det.cast(stemflow_actors::detector::DetectorMsg::InjectPanic(
                    "injected detector panic".into(),
                ));
                break;
            }
        }
    });
    let err = inst
        .run_acquisition(request(pipeline(Arc::clone(&flag))))
        .await
        .unwrap_err();
    match &err.error {
        stemflow_actors::orchestrator::RunError::ActorFailed { actor, error, .. } => {
            assert_eq!(*actor, Role::Detector);
            assert!(error.contains("injected detector panic"), "{error}");
        }
        other => panic!("expected ActorFailed, got {other}"),
    }
    assert_eq!(inst.state(), AcqState::Idle);
    let rec = inst.run_acquisition(request(pipeline(flag))).await.unwrap();
    assert_eq!(rec.exit_status, ExitStatus::Completed);
    assert_eq!(rec.frames_processed, 16);
    inst.shutdown().await;
}
