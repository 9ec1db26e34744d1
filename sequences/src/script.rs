//! Sequence scripts in Rhai (docs/decisions/0004-scripting.md): loops, conditions, waits
//! with deadlines, plan calls, microscope settings and the last results, run on their own
//! thread against a [`Session`].
//!
//! Sandbox: no modules, no `eval`, no file or network access; limits on call depth, string,
//! array and map sizes. Every host function is a checkpoint (pause, resume, stop, abort are
//! honoured there, and a running loop is interrupted within 1000 operations of a stop).
//! Stop and abort cannot be caught by a script's `try`/`catch`. Cleanup runs on every exit
//! path, a panic included.
//!
//! Host functions: `run_plan(name, #{params})` → array of outcome maps;
//! `set_microscope(#{defocus_m: 1e-8, ..})` and `set_defocus(m)` → read-back state map;
//! `read_microscope()`; `last_results()` → map of scalars (`virtual.bf.contrast`, …);
//! `monitor(name)`; `sleep(s)`; `wait_until(|| cond, timeout_s, poll_s)`;
//! `suspend_while_below(monitor, threshold, max_s)`; `log(text)` (and `print`).
//!
//! Hooks (functions the script may define): `on_setup()`, `on_determine_nav_shape(nav)`
//! (`[rows, cols]` in and out), `on_ready_for_data(acq)`, `on_acquisition_done(outcome)`,
//! `on_error(message)`.

use crate::engine::{
    ControlState, Hooks, RunOutcome, SequenceError, Session, StepOp, Suspender, drive_steps,
};
use crate::plan::{PlanAcquisition, PlanSpec, ScanDefaults, describe_microscope};
use rhai::{
    AST, Array, CallFnOptions, Dynamic, Engine, EvalAltResult, FnPtr, Map, NativeCallContext,
    Position, Scope,
};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;
use stemflow_core::NavShape;
use stemflow_core::devices::MicroscopeSettings;
use stemflow_core::metadata::MicroscopeState;

/// A script to run: its text, the file it came from, and variables set before it runs
/// (queue parameters and sweep values).
#[derive(Clone, Debug, PartialEq)]
pub struct ScriptSource {
    /// The file (for errors).
    pub file: PathBuf,
    /// The text.
    pub text: String,
    /// Variables defined for the script (TOML values).
    pub vars: BTreeMap<String, toml::Value>,
}

impl ScriptSource {
    /// Reads `path`.
    ///
    /// # Errors
    /// [`SequenceError::Script`] when it cannot be read.
    pub fn load(path: &Path) -> Result<Self, SequenceError> {
        let text = std::fs::read_to_string(path).map_err(|e| SequenceError::Script {
            file: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Ok(Self {
            file: path.into(),
            text,
            vars: BTreeMap::new(),
        })
    }

    fn err(&self, message: impl Into<String>) -> SequenceError {
        SequenceError::Script {
            file: self.file.display().to_string(),
            message: message.into(),
        }
    }

    /// Compiles the script (syntax check), touching nothing.
    ///
    /// # Errors
    /// [`SequenceError::Script`] with the line and position of the first syntax error.
    pub fn check(&self) -> Result<(), SequenceError> {
        sandbox_engine()
            .compile(&self.text)
            .map(|_| ())
            .map_err(|e| self.err(e.to_string()))
    }
}

const HOOKS: [&str; 5] = [
    "on_setup",
    "on_determine_nav_shape",
    "on_ready_for_data",
    "on_acquisition_done",
    "on_error",
];

fn sandbox_engine() -> Engine {
    let mut e = Engine::new();
    e.set_max_call_levels(64);
    e.set_max_expr_depths(128, 64);
    e.set_max_string_size(1 << 20);
    e.set_max_array_size(1 << 20);
    e.set_max_map_size(1 << 16);
    e.disable_symbol("eval");
    e
}

struct Shared {
    session: RefCell<Session>,
    /// The original error behind a script runtime error, so the caller sees the typed error
    /// (the device, setting, requested and actual values) rather than its text.
    pending: RefCell<Option<SequenceError>>,
    defaults: ScanDefaults,
    hooks: RefCell<BTreeSet<String>>,
}

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

impl Shared {
    fn fail<T>(&self, e: SequenceError) -> RhaiResult<T> {
        let text = e.to_string();
        let stop = matches!(
            e,
            SequenceError::Stopped | SequenceError::Aborted | SequenceError::TimeLimit { .. }
        );
        *self.pending.borrow_mut() = Some(e);
        if stop {
            // Not catchable by the script's try/catch.
            Err(Box::new(EvalAltResult::ErrorTerminated(
                text.into(),
                Position::NONE,
            )))
        } else {
            Err(text.into())
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Session) -> Result<T, SequenceError>) -> RhaiResult<T> {
        let r = f(&mut self.session.borrow_mut());
        r.or_else(|e| self.fail(e))
    }
}

fn to_dynamic(v: &serde_json::Value) -> Dynamic {
    match v {
        serde_json::Value::Null => Dynamic::UNIT,
        serde_json::Value::Bool(b) => (*b).into(),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => i.into(),
            None => n.as_f64().unwrap_or(f64::NAN).into(),
        },
        serde_json::Value::String(s) => s.clone().into(),
        serde_json::Value::Array(a) => a.iter().map(to_dynamic).collect::<Array>().into(),
        serde_json::Value::Object(o) => o
            .iter()
            .map(|(k, v)| (k.as_str().into(), to_dynamic(v)))
            .collect::<Map>()
            .into(),
    }
}

fn ser_dynamic<T: serde::Serialize>(v: &T) -> Dynamic {
    serde_json::to_value(v)
        .map(|j| to_dynamic(&j))
        .unwrap_or(Dynamic::UNIT)
}

fn to_toml(d: &Dynamic) -> Result<toml::Value, String> {
    if let Ok(i) = d.as_int() {
        return Ok(toml::Value::Integer(i));
    }
    if let Ok(f) = d.as_float() {
        return Ok(toml::Value::Float(f));
    }
    if let Ok(b) = d.as_bool() {
        return Ok(toml::Value::Boolean(b));
    }
    if d.is_string() {
        return Ok(toml::Value::String(d.to_string()));
    }
    if let Some(a) = d.clone().try_cast::<Array>() {
        return a
            .iter()
            .map(to_toml)
            .collect::<Result<_, _>>()
            .map(toml::Value::Array);
    }
    if let Some(m) = d.clone().try_cast::<Map>() {
        let mut t = toml::Table::new();
        for (k, v) in &m {
            t.insert(k.to_string(), to_toml(v)?);
        }
        return Ok(toml::Value::Table(t));
    }
    Err(format!("cannot pass a {} to a plan", d.type_name()))
}

fn toml_to_dynamic(v: &toml::Value) -> Dynamic {
    serde_json::to_value(v)
        .map(|j| to_dynamic(&j))
        .unwrap_or(Dynamic::UNIT)
}

fn state_map(s: &MicroscopeState) -> Dynamic {
    ser_dynamic(s)
}

/// Calls the script's hooks from inside a host function.
struct ScriptHooks<'a, 'b> {
    ctx: &'a NativeCallContext<'b>,
    shared: &'a Shared,
}

impl ScriptHooks<'_, '_> {
    fn call(&self, name: &str, args: impl rhai::FuncArgs) -> Result<Dynamic, SequenceError> {
        if !self.shared.hooks.borrow().contains(name) {
            return Ok(Dynamic::UNIT);
        }
        self.ctx
            .call_fn::<Dynamic>(name, args)
            .map_err(|e| self.take_error(name, *e))
    }

    fn take_error(&self, name: &str, e: EvalAltResult) -> SequenceError {
        self.shared
            .pending
            .borrow_mut()
            .take()
            .unwrap_or_else(|| SequenceError::Script {
                file: "(hook)".into(),
                message: format!("hook {name}: {e}"),
            })
    }
}

impl Hooks for ScriptHooks<'_, '_> {
    fn on_determine_nav_shape(&mut self, nav: NavShape) -> Result<NavShape, SequenceError> {
        let arg: Array = vec![(nav.rows as i64).into(), (nav.cols as i64).into()];
        let r = self.call("on_determine_nav_shape", (arg,))?;
        if r.is_unit() {
            return Ok(nav);
        }
        let bad = || SequenceError::Script {
            file: "(hook)".into(),
            message: format!("on_determine_nav_shape must return [rows, cols]; got {r}"),
        };
        let a = r.clone().try_cast::<Array>().ok_or_else(bad)?;
        match a.as_slice() {
            [r0, c0] => match (r0.as_int(), c0.as_int()) {
                (Ok(r0), Ok(c0)) if r0 > 0 && c0 > 0 => Ok(NavShape::new(r0 as usize, c0 as usize)),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }

    fn on_ready_for_data(&mut self, acq: &PlanAcquisition) -> Result<(), SequenceError> {
        self.call("on_ready_for_data", (ser_dynamic(acq),))
            .map(|_| ())
    }

    fn on_acquisition_done(&mut self, outcome: &RunOutcome) -> Result<(), SequenceError> {
        self.call("on_acquisition_done", (ser_dynamic(outcome),))
            .map(|_| ())
    }
}

fn register(engine: &mut Engine, shared: &Rc<Shared>) {
    let s = shared.clone();
    engine.on_print(move |t| s.session.borrow().log(&format!("script: {t}")));
    let s = shared.clone();
    engine.on_debug(move |t, _, pos| s.session.borrow().log(&format!("script debug {pos}: {t}")));
    // A stop, an abort or the time limit interrupts a busy loop that calls no host
    // function.
    let control = shared.session.borrow().control().clone();
    let limit = shared.session.borrow().time_limit();
    engine.on_progress(move |ops| {
        if ops % 1000 != 0 {
            return None;
        }
        if matches!(control.state(), ControlState::Stop | ControlState::Abort) {
            return Some("stopped by request".into());
        }
        match limit.map(|l| l.check()) {
            Some(Err(e)) => Some(e.to_string().into()),
            _ => None,
        }
    });

    let s = shared.clone();
    engine.register_fn("log", move |t: &str| {
        s.session.borrow().log(&format!("script: {t}"))
    });

    let s = shared.clone();
    engine.register_fn(
        "run_plan",
        move |ctx: NativeCallContext, name: &str, params: Map| -> RhaiResult<Array> {
            let mut t = toml::Table::new();
            t.insert("plan".into(), toml::Value::String(name.into()));
            for (k, v) in &params {
                match to_toml(v) {
                    Ok(v) => {
                        t.insert(k.to_string(), v);
                    }
                    Err(e) => return Err(format!("run_plan `{name}`: parameter `{k}`: {e}").into()),
                }
            }
            let spec: PlanSpec = toml::Value::Table(t)
                .try_into()
                .map_err(|e| format!("run_plan `{name}`: {e}"))?;
            let plan = match spec.build(&s.defaults) {
                Ok(p) => p,
                Err(e) => return s.fail(e.into()),
            };
            let steps = match plan.steps() {
                Ok(st) => st,
                Err(e) => return s.fail(e.into()),
            };
            let mut hooks = ScriptHooks {
                ctx: &ctx,
                shared: &s,
            };
            let r = drive_steps(&steps, &mut hooks, &mut |op: StepOp| {
                s.session.borrow_mut().perform(op)
            });
            match r {
                Ok(outs) => Ok(outs.iter().map(ser_dynamic).collect()),
                Err(e) => {
                    // A hook's error may already be pending; keep the first cause.
                    let e = s.pending.borrow_mut().take().unwrap_or(e);
                    s.fail(e)
                }
            }
        },
    );

    let s = shared.clone();
    engine.register_fn("set_microscope", move |m: Map| -> RhaiResult<Dynamic> {
        let t = match to_toml(&Dynamic::from(m)) {
            Ok(t) => t,
            Err(e) => return Err(format!("set_microscope: {e}").into()),
        };
        let settings: MicroscopeSettings =
            t.try_into().map_err(|e| format!("set_microscope: {e}"))?;
        s.with(|se| se.set_microscope(&settings))
            .map(|st| state_map(&st))
    });
    let s = shared.clone();
    engine.register_fn("set_defocus", move |df: f64| -> RhaiResult<Dynamic> {
        let settings = MicroscopeSettings {
            defocus_m: Some(df),
            ..Default::default()
        };
        s.with(|se| {
            se.log(&format!("microscope: {}", describe_microscope(&settings)));
            se.set_microscope(&settings)
        })
        .map(|st| state_map(&st))
    });
    let s = shared.clone();
    engine.register_fn("read_microscope", move || -> RhaiResult<Dynamic> {
        s.with(|se| {
            se.checkpoint()?;
            Ok(se.executor().read_microscope()?)
        })
        .map(|st| state_map(&st))
    });
    let s = shared.clone();
    engine.register_fn("last_results", move || -> RhaiResult<Map> {
        s.with(|se| {
            se.checkpoint()?;
            Ok(se.executor().last_results())
        })
        .map(|r| {
            r.into_iter()
                .map(|(k, v)| (k.into(), Dynamic::from_float(v)))
                .collect()
        })
    });
    let s = shared.clone();
    engine.register_fn("monitor", move |name: &str| -> RhaiResult<f64> {
        s.with(|se| {
            se.checkpoint()?;
            Ok(se.executor().read_monitor(name)?)
        })
    });
    let s = shared.clone();
    engine.register_fn("sleep", move |secs: f64| -> RhaiResult<()> {
        s.with(|se| se.sleep(secs))
    });
    let s = shared.clone();
    engine.register_fn("sleep", move |secs: i64| -> RhaiResult<()> {
        s.with(|se| se.sleep(secs as f64))
    });
    let s = shared.clone();
    engine.register_fn(
        "wait_until",
        move |ctx: NativeCallContext, cond: FnPtr, timeout_s: f64, poll_s: f64| -> RhaiResult<()> {
            let started = Instant::now();
            loop {
                s.with(|se| se.checkpoint())?;
                if cond.call_within_context::<bool>(&ctx, ())? {
                    return Ok(());
                }
                let waited = started.elapsed().as_secs_f64();
                if waited >= timeout_s {
                    return s.fail(SequenceError::Deadline {
                        what: format!("the condition of wait_until (timeout {timeout_s} s)"),
                        waited_s: waited,
                    });
                }
                s.with(|se| se.sleep(poll_s.clamp(0.001, 60.0)))?;
            }
        },
    );
    let s = shared.clone();
    engine.register_fn(
        "suspend_while_below",
        move |monitor: &str, threshold: f64, max_s: f64| {
            s.session.borrow_mut().add_suspender(Suspender {
                monitor: monitor.into(),
                below: Some(threshold),
                above: None,
                max_suspend_s: max_s,
                poll_s: 0.05_f64.max(max_s / 1000.0).min(1.0),
            });
        },
    );
}

/// Runs `src` on its own thread against `session`; returns the session (for the next queue
/// item) and the outcomes of the acquisitions the script ran, or its error. Cleanup
/// ([`Session::cleanup`]) runs on every exit path, a panic included; `on_error` is called
/// with the message when the script fails (not when it is stopped or aborted).
pub fn run_script(
    session: Session,
    src: &ScriptSource,
    defaults: &ScanDefaults,
) -> (Session, Result<Vec<RunOutcome>, SequenceError>) {
    let src = src.clone();
    let defaults = defaults.clone();
    let thread = std::thread::Builder::new()
        .name("sequence-script".into())
        .spawn(move || {
            let shared = Rc::new(Shared {
                session: RefCell::new(session),
                pending: RefCell::new(None),
                defaults,
                hooks: RefCell::new(BTreeSet::new()),
            });
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_on_thread(&shared, &src)
            }));
            let result = match result {
                Ok(r) => r,
                Err(p) => Err(src.err(format!(
                    "the script engine panicked: {}",
                    p.downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| p.downcast_ref::<&str>().copied())
                        .unwrap_or("?")
                ))),
            };
            shared.session.borrow_mut().cleanup();
            let mut session = match Rc::try_unwrap(shared) {
                Ok(s) => s.session.into_inner(),
                Err(_) => unreachable_session(),
            };
            // On failure the outcomes stay in the session for the caller's journal.
            let result = result.map(|()| session.take_outcomes());
            (session, result)
        });
    match thread.map(|t| t.join()) {
        Ok(Ok(r)) => r,
        // The thread could not start, or died after cleanup: nothing to give back.
        _ => panic!("sequence script thread failed"),
    }
}

fn unreachable_session() -> Session {
    // Every Rc clone lives in the engine, which is dropped before this is reached.
    panic!("script session still shared after the engine was dropped")
}

fn run_on_thread(shared: &Rc<Shared>, src: &ScriptSource) -> Result<(), SequenceError> {
    let mut engine = sandbox_engine();
    let ast: AST = engine
        .compile(&src.text)
        .map_err(|e| src.err(e.to_string()))?;
    let hooks: BTreeSet<String> = ast
        .iter_functions()
        .map(|f| f.name.to_string())
        .filter(|n| HOOKS.contains(&n.as_str()))
        .collect();
    *shared.hooks.borrow_mut() = hooks;
    register(&mut engine, shared);
    let mut scope = Scope::new();
    for (k, v) in &src.vars {
        scope.push_constant(k.as_str(), toml_to_dynamic(v));
    }
    let control = shared.session.borrow().control().clone();
    let limit = shared.session.borrow().time_limit();
    let fail = |e: Box<EvalAltResult>| -> SequenceError {
        if let Some(p) = shared.pending.borrow_mut().take() {
            return p;
        }
        match (*e, control.state()) {
            (EvalAltResult::ErrorTerminated(..), ControlState::Stop) => SequenceError::Stopped,
            (EvalAltResult::ErrorTerminated(..), ControlState::Abort) => SequenceError::Aborted,
            // A busy loop interrupted at the time limit (see `register`'s progress check).
            (e @ EvalAltResult::ErrorTerminated(..), _) => match limit.map(|l| l.check()) {
                Some(Err(t)) => t,
                _ => src.err(e.to_string()),
            },
            (e, _) => src.err(e.to_string()),
        }
    };
    let has_hook = |n: &str| shared.hooks.borrow().contains(n);
    let mut run = || -> Result<(), SequenceError> {
        if has_hook("on_setup") {
            let _: Dynamic = engine
                .call_fn_with_options::<Dynamic>(
                    CallFnOptions::new().eval_ast(false),
                    &mut scope,
                    &ast,
                    "on_setup",
                    (),
                )
                .map_err(fail)?;
        }
        engine.run_ast_with_scope(&mut scope, &ast).map_err(fail)
    };
    let r = run();
    if let Err(e) = &r
        && has_hook("on_error")
        && !matches!(e, SequenceError::Stopped | SequenceError::Aborted)
    {
        let mut scope = Scope::new();
        let _ = engine.call_fn_with_options::<Dynamic>(
            CallFnOptions::new().eval_ast(false),
            &mut scope,
            &ast,
            "on_error",
            (e.to_string(),),
        );
    }
    drop(engine);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Control, FakeExecutor};
    use crate::plan::Stem4dScanPlan;
    use std::time::Duration;
    use stemflow_core::{DType, SigShape};

    fn defaults() -> ScanDefaults {
        ScanDefaults {
            scan: Stem4dScanPlan {
                nav_shape: NavShape::new(4, 4),
                sig_shape: SigShape::new(8, 8),
                dtype: DType::U16,
                dwell_time_s: 1e-3,
                flyback_s: 0.0,
                exposure_s: 1e-3,
                counter_depth: Some(12),
                microscope: None,
            },
        }
    }

    fn script(text: &str) -> ScriptSource {
        ScriptSource {
            file: "test.rhai".into(),
            text: text.into(),
            vars: BTreeMap::new(),
        }
    }

    fn run(
        fake: &FakeExecutor,
        control: Control,
        text: &str,
    ) -> (Vec<String>, Result<Vec<RunOutcome>, SequenceError>) {
        let mut session = Session::new(Box::new(fake.clone()), control, None);
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let l2 = log.clone();
        session.set_log(Box::new(move |m| l2.lock().unwrap().push(m.to_string())));
        let (_, r) = run_script(session, &script(text), &defaults());
        let lines = log.lock().unwrap().clone();
        (lines, r)
    }

    #[test]
    fn refocuses_on_the_bright_field_contrast() {
        let fake = FakeExecutor::default();
        let text = r#"
            let best = 0.0; let best_c = -1.0;
            for df in [-2e-8, -1e-8, 0.0, 1e-8, 2e-8] {
                set_defocus(df + 3e-9);
                run_plan("stem_4d_scan", #{ nav_shape: "2x2" });
                let c = last_results()["virtual.bf.contrast"];
                if c > best_c { best_c = c; best = df + 3e-9; }
            }
            set_defocus(best);
            log(`best defocus ${best}`);
        "#;
        let (log, r) = run(&fake, Control::default(), text);
        let outs = r.unwrap();
        assert_eq!(outs.len(), 5);
        assert_eq!(outs[0].frames_expected, 4);
        assert!(
            log.iter().any(|l| l.contains("best defocus 0.000000003")),
            "{log:?}"
        );
        assert_eq!(fake.state.lock().unwrap().defocus_m, 3e-9);
        assert_eq!(fake.calls().last().unwrap(), "cleanup blank=false");
    }

    #[test]
    fn hooks_are_called() {
        let fake = FakeExecutor::default();
        let text = r#"
            fn on_setup() { log("setup"); }
            fn on_determine_nav_shape(nav) { [nav[0] / 2, nav[1]] }
            fn on_ready_for_data(acq) { log(`ready ${acq.label}`); }
            fn on_acquisition_done(o) { log(`done ${o.frames_expected}`); }
            run_plan("repeated_scan", #{ repeats: 2 });
        "#;
        let (log, r) = run(&fake, Control::default(), text);
        assert_eq!(r.unwrap().len(), 2);
        let log = log.join("\n");
        assert!(log.contains("script: setup"), "{log}");
        assert!(log.contains("script: ready repeat 1"), "{log}");
        assert!(log.contains("script: done 8"), "{log}");
        assert!(
            log.find("setup") < log.find("ready repeat 0"),
            "setup runs first"
        );
    }

    #[test]
    fn a_setting_that_does_not_take_fails_typed_and_calls_on_error() {
        let fake = FakeExecutor {
            stuck_defocus: Some(0.0),
            ..Default::default()
        };
        let text = r#"
            fn on_error(msg) { log(`on_error: ${msg}`); }
            set_defocus(5e-8);
            run_plan("stem_4d_scan", #{});
        "#;
        let (log, r) = run(&fake, Control::default(), text);
        let e = r.unwrap_err();
        assert!(matches!(e, SequenceError::Exec(_)), "{e:?}");
        let t = e.to_string();
        assert!(
            t.contains("defocus_m") && t.contains("0.00000005") && t.contains("reports 0"),
            "{t}"
        );
        assert!(
            log.iter().any(|l| l.contains("on_error: set microscope")),
            "{log:?}"
        );
        assert!(!fake.calls().iter().any(|c| c.starts_with("acquire")));
        assert_eq!(fake.calls().last().unwrap(), "cleanup blank=false");
    }

    #[test]
    fn stop_interrupts_waits_and_busy_loops_and_cannot_be_caught() {
        for text in [
            "loop { try { sleep(0.01); } catch (e) { log(`caught ${e}`); } }",
            "let x = 0; loop { x += 1; }",
        ] {
            let fake = FakeExecutor::default();
            let control = Control::default();
            let c2 = control.clone();
            let t = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                c2.stop();
            });
            let started = Instant::now();
            let (log, r) = run(&fake, control, text);
            t.join().unwrap();
            assert!(matches!(r, Err(SequenceError::Stopped)), "{text}: {r:?}");
            assert!(started.elapsed() < Duration::from_secs(5));
            assert!(!log.iter().any(|l| l.contains("caught")), "{log:?}");
            assert_eq!(fake.calls(), vec!["cleanup blank=false"]);
        }
    }

    #[test]
    fn waits_have_deadlines() {
        let fake = FakeExecutor::default();
        fake.monitors
            .lock()
            .unwrap()
            .insert("beam_current_na".into(), vec![0.1]);
        let text = r#"wait_until(|| monitor("beam_current_na") > 0.5, 0.1, 0.01);"#;
        let (_, r) = run(&fake, Control::default(), text);
        let e = r.unwrap_err().to_string();
        assert!(e.contains("wait_until") && e.contains("deadline"), "{e}");
        let text = r#"wait_until(|| monitor("beam_current_na") < 0.5, 1.0, 0.01); log("ok");"#;
        assert!(run(&fake, Control::default(), text).1.is_ok());
    }

    #[test]
    fn sandbox_and_syntax_errors_name_the_line() {
        let e = script("let a = 1;\nlet b = ;")
            .check()
            .unwrap_err()
            .to_string();
        assert!(e.contains("test.rhai") && e.contains("line 2"), "{e}");
        assert!(script("eval(\"1\")").check().is_err());
        assert!(script("import \"x\" as y;").check().is_err());
        let fake = FakeExecutor::default();
        let (_, r) = run(
            &fake,
            Control::default(),
            "run_plan(\"stem_4d_scan\", #{ repeats: 2 });",
        );
        assert!(r.unwrap_err().to_string().contains("repeats"));
    }
}
