//! The unattended queue: a TOML file of plan and script invocations with sweeps, per-item
//! error policy and metadata, validated whole before anything moves, run with a crash-safe
//! journal ([`crate::journal`]), notifications ([`crate::notify`]) and `--resume`.
//!
//! ```toml
//! [queue]
//! name = "overnight"
//! on_error = "retry"          # default policy: abort | skip | retry
//! retries = 2                 # with retry; afterwards `after_retries` (abort | skip)
//! log = "queue.log"           # relative to the output folder
//! webhook = "http://127.0.0.1:9000/stemflow"
//! blank_beam_on_cleanup = true
//!
//! [[suspend]]                 # hold while the beam current is low
//! monitor = "beam_current_na"
//! below = 0.5
//!
//! [[item]]
//! name = "dark"
//! plan = "dark_reference"
//! nav_shape = "4x4"
//!
//! [[item]]
//! name = "focus"
//! plan = "stem_4d_scan"
//! on_error = "skip"
//! sweep = { defocus_m = [-2e-8, 0.0, 2e-8] }
//! metadata = { sample = "Au on C" }
//!
//! [[item]]
//! name = "refocus"
//! script = "refocus.rhai"     # relative to the queue file
//! params = { step_m = 1e-8 }  # variables of the script
//! max_duration_s = 600        # time limit (default: 3600 s for a script, twice the
//!                             # estimate + 600 s for a plan)
//! ```

use crate::engine::{Control, Executor, RunOutcome, SequenceError, Session, Suspender};
use crate::journal::{
    Journal, JournalError, JournalEvent, JournalRecord, UnitStatus, finished_keys,
};
use crate::notify::{Notifier, NotifyError};
use crate::plan::{Plan, PlanSpec, PlanSummary, ScanDefaults};
use crate::script::{ScriptSource, run_script};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors of a queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The queue file is invalid; nothing was run.
    #[error("{file}: key `{key}`: {problem}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// The key (`item[2] \"focus\".nav_shape`).
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// The output folder could not be prepared.
    #[error("output folder {dir}: {during}: {source}")]
    Output {
        /// The folder.
        dir: PathBuf,
        /// What was done.
        during: &'static str,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A notification target could not be set up.
    #[error(transparent)]
    Notify(#[from] NotifyError),
    /// `--resume` with a journal written by another queue file.
    #[error(
        "journal {journal} belongs to queue {found}, not {expected}: resume it with that file, or use another output folder"
    )]
    JournalMismatch {
        /// The journal.
        journal: PathBuf,
        /// The queue file it names.
        found: String,
        /// The queue file given now.
        expected: String,
    },
    /// The queue was aborted at a unit (policy `abort`, or stopped by the user).
    #[error("queue aborted at `{key}` after {attempts} attempt(s): {error}")]
    Aborted {
        /// The unit.
        key: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        error: String,
    },
}

/// What to do when a unit fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Stop the queue.
    Abort,
    /// Record the failure and go on with the next unit.
    Skip,
    /// Try again, `retries` times, then `after_retries`.
    Retry,
}

/// A unit's error policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ErrorPolicy {
    /// What to do.
    pub on_error: OnError,
    /// Retries (with `retry`).
    pub retries: u32,
    /// After the retries: `abort` or `skip`.
    pub after_retries: OnError,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct QueueSection {
    name: Option<String>,
    on_error: Option<OnError>,
    retries: Option<u32>,
    after_retries: Option<OnError>,
    log: Option<PathBuf>,
    webhook: Option<String>,
    #[serde(default)]
    blank_beam_on_cleanup: bool,
}

/// What a unit runs.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// A plan.
    Plan(Plan),
    /// A script.
    Script(ScriptSource),
}

/// One unit of the queue: one sweep point of one item.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueUnit {
    /// Unique key: `NNN:name` or `NNN:name#k` for sweep point k.
    pub key: String,
    /// What it runs.
    pub action: Action,
    /// Its error policy.
    pub policy: ErrorPolicy,
    /// Parameters swept and user metadata, stored in the journal.
    pub metadata: serde_json::Value,
    /// How long one attempt may run before it fails with
    /// [`SequenceError::TimeLimit`]: the item's `max_duration_s`, else
    /// [`default_time_limit`].
    pub time_limit: Duration,
}

/// A script unit's time limit when its item gives no `max_duration_s`, s: a script's
/// duration cannot be estimated (its steps depend on its results), so it gets a fixed one
/// that ends a script stuck in `loop {}` or `sleep(1e9)` within the hour.
pub const SCRIPT_TIME_LIMIT_S: f64 = 3600.0;

/// Margin over twice a plan's estimated duration in a plan unit's default time limit, s
/// (configuration, settling and arming are not in the estimate).
pub const PLAN_TIME_MARGIN_S: f64 = 600.0;

/// The time limit of a unit whose item gives no `max_duration_s`: a plan's is twice its
/// estimated duration plus [`PLAN_TIME_MARGIN_S`]; a script's [`SCRIPT_TIME_LIMIT_S`].
///
/// # Errors
/// The plan's steps cannot be built.
pub fn default_time_limit(action: &Action) -> Result<Duration, crate::plan::PlanError> {
    Ok(Duration::from_secs_f64(match action {
        Action::Plan(p) => 2.0 * p.summary()?.duration_s + PLAN_TIME_MARGIN_S,
        Action::Script(_) => SCRIPT_TIME_LIMIT_S,
    }))
}

/// A validated queue.
#[derive(Clone, Debug)]
pub struct Queue {
    /// The file.
    pub file: PathBuf,
    /// Its name.
    pub name: String,
    /// The units, in order.
    pub units: Vec<QueueUnit>,
    /// Suspenders checked at every checkpoint.
    pub suspenders: Vec<Suspender>,
    /// Log file (relative paths: to the output folder).
    pub log: Option<PathBuf>,
    /// Webhook URL.
    pub webhook: Option<String>,
    /// Blank the beam when the queue or a script ends.
    pub blank_beam_on_cleanup: bool,
}

impl Queue {
    /// Reads and validates `file` whole: every plan is built (parameters checked), every
    /// script read and compiled, every sweep expanded; nothing is touched.
    ///
    /// # Errors
    /// [`QueueError::Read`], or [`QueueError::Invalid`] naming the file, the key and the
    /// problem.
    pub fn load(file: &Path, defaults: &ScanDefaults) -> Result<Self, QueueError> {
        let text = std::fs::read_to_string(file).map_err(|source| QueueError::Read {
            file: file.into(),
            source,
        })?;
        Self::parse(file, &text, defaults)
    }

    /// As [`load`](Self::load), from text.
    ///
    /// # Errors
    /// [`QueueError::Invalid`].
    pub fn parse(file: &Path, text: &str, defaults: &ScanDefaults) -> Result<Self, QueueError> {
        let invalid = |key: &str, problem: String| QueueError::Invalid {
            file: file.into(),
            key: key.into(),
            problem,
        };
        let mut root: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            invalid("(file)", e.to_string().trim().replace('\n', " "))
        })?;
        for k in root.keys() {
            if !["queue", "suspend", "item"].contains(&k.as_str()) {
                return Err(invalid(
                    k,
                    "unknown section; expected queue, suspend, item".into(),
                ));
            }
        }
        let section: QueueSection = match root.remove("queue") {
            Some(v) => v.try_into().map_err(|e| invalid("queue", e.to_string()))?,
            None => QueueSection::default(),
        };
        let suspenders: Vec<Suspender> = match root.remove("suspend") {
            Some(v) => v
                .try_into()
                .map_err(|e| invalid("suspend", e.to_string()))?,
            None => Vec::new(),
        };
        for (i, s) in suspenders.iter().enumerate() {
            if s.below.is_none() && s.above.is_none() {
                return Err(invalid(
                    &format!("suspend[{i}]"),
                    "give `below` or `above`".into(),
                ));
            }
        }
        if let Some(w) = &section.webhook {
            crate::notify::Webhook::parse(w)
                .map_err(|e| invalid("queue.webhook", e.to_string()))?;
        }
        let default_policy = policy(
            section.on_error,
            section.retries,
            section.after_retries,
            ErrorPolicy {
                on_error: OnError::Abort,
                retries: 0,
                after_retries: OnError::Abort,
            },
        )
        .map_err(|p| invalid("queue.on_error", p))?;
        let items = match root.remove("item") {
            Some(toml::Value::Array(a)) => a,
            Some(_) => {
                return Err(invalid(
                    "item",
                    "must be an array of tables [[item]]".into(),
                ));
            }
            None => return Err(invalid("item", "the queue has no [[item]]".into())),
        };
        let base_dir = file.parent().unwrap_or(Path::new("."));
        let mut units = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let toml::Value::Table(mut t) = item else {
                return Err(invalid(&format!("item[{i}]"), "must be a table".into()));
            };
            let name = match t.remove("name") {
                Some(toml::Value::String(s)) if !s.is_empty() => s,
                Some(_) => {
                    return Err(invalid(
                        &format!("item[{i}].name"),
                        "must be a non-empty string".into(),
                    ));
                }
                None => format!("item{i}"),
            };
            let at = format!("item[{i}] \"{name}\"");
            let get_pol =
                |t: &mut toml::Table, k: &str| -> Result<Option<toml::Value>, QueueError> {
                    Ok(t.remove(k))
                };
            let on_error: Option<OnError> = get_pol(&mut t, "on_error")?
                .map(|v| v.try_into())
                .transpose()
                .map_err(|e| invalid(&format!("{at}.on_error"), e.to_string()))?;
            let after: Option<OnError> = get_pol(&mut t, "after_retries")?
                .map(|v| v.try_into())
                .transpose()
                .map_err(|e| invalid(&format!("{at}.after_retries"), e.to_string()))?;
            let retries: Option<u32> = get_pol(&mut t, "retries")?
                .map(|v| v.try_into())
                .transpose()
                .map_err(|e| invalid(&format!("{at}.retries"), e.to_string()))?;
            let pol = policy(on_error, retries, after, default_policy)
                .map_err(|p| invalid(&format!("{at}.on_error"), p))?;
            let max_duration_s: Option<f64> = get_pol(&mut t, "max_duration_s")?
                .map(|v| match v {
                    toml::Value::Integer(i) => Ok(i as f64),
                    toml::Value::Float(f) => Ok(f),
                    other => Err(format!("must be a number of seconds, got {other}")),
                })
                .transpose()
                .map_err(|p| invalid(&format!("{at}.max_duration_s"), p))?;
            if let Some(m) = max_duration_s
                && !(m > 0.0 && m <= 1e7)
            {
                return Err(invalid(
                    &format!("{at}.max_duration_s"),
                    format!("{m} s: must be more than 0 and at most 10^7 s"),
                ));
            }
            let metadata = match t.remove("metadata") {
                Some(v @ toml::Value::Table(_)) => serde_json::to_value(v).unwrap_or_default(),
                Some(_) => {
                    return Err(invalid(&format!("{at}.metadata"), "must be a table".into()));
                }
                None => serde_json::Value::Object(Default::default()),
            };
            let sweep = match t.remove("sweep") {
                Some(toml::Value::Table(s)) => s,
                Some(_) => {
                    return Err(invalid(
                        &format!("{at}.sweep"),
                        "must be a table of arrays".into(),
                    ));
                }
                None => toml::Table::new(),
            };
            let points =
                expand_sweep(&sweep).map_err(|(k, p)| invalid(&format!("{at}.sweep.{k}"), p))?;
            let script = match t.remove("script") {
                Some(toml::Value::String(s)) => Some(base_dir.join(s)),
                Some(_) => {
                    return Err(invalid(
                        &format!("{at}.script"),
                        "must be a file name".into(),
                    ));
                }
                None => None,
            };
            let params = match (&script, t.remove("params")) {
                (Some(_), Some(toml::Value::Table(p))) => p,
                (Some(_), Some(_)) => {
                    return Err(invalid(&format!("{at}.params"), "must be a table".into()));
                }
                (None, Some(_)) => {
                    return Err(invalid(
                        &format!("{at}.params"),
                        "only script items take params; plans take their parameters as keys".into(),
                    ));
                }
                (_, None) => toml::Table::new(),
            };
            if script.is_some()
                && let Some(k) = t.keys().next()
            {
                return Err(invalid(
                        &format!("{at}.{k}"),
                        "a script item takes only name, script, params, sweep, metadata, max_duration_s and the policy keys".into(),
                    ));
            }
            let loaded = match &script {
                Some(path) => {
                    let src = ScriptSource::load(path)
                        .map_err(|e| invalid(&format!("{at}.script"), e.to_string()))?;
                    src.check()
                        .map_err(|e| invalid(&format!("{at}.script"), e.to_string()))?;
                    Some(src)
                }
                None => None,
            };
            for (k, point) in points.iter().enumerate() {
                let key = if points.len() > 1 {
                    format!("{i:03}:{name}#{k}")
                } else {
                    format!("{i:03}:{name}")
                };
                let action =
                    match &loaded {
                        Some(src) => {
                            let mut src = src.clone();
                            src.vars = params.clone().into_iter().collect();
                            src.vars.extend(point.clone());
                            Action::Script(src)
                        }
                        None => {
                            let mut pt = t.clone();
                            pt.extend(point.clone());
                            // One swept defocus value per point.
                            if let Some(v @ (toml::Value::Float(_) | toml::Value::Integer(_))) =
                                pt.get("defocus_m")
                            {
                                let v = v.clone();
                                pt.insert("defocus_m".into(), toml::Value::Array(vec![v]));
                            }
                            if !pt.contains_key("plan") {
                                return Err(invalid(
                                    &at,
                                    "give `plan = \"…\"` or `script = \"file.rhai\"`".into(),
                                ));
                            }
                            let spec: PlanSpec = toml::Value::Table(pt).try_into().map_err(
                                |e: toml::de::Error| invalid(&at, e.to_string().trim().to_string()),
                            )?;
                            let plan = spec.build(defaults).map_err(|e| {
                                let crate::plan::PlanError::Parameter { param, .. } = &e;
                                invalid(&format!("{at}.{param}"), e.to_string())
                            })?;
                            Action::Plan(plan)
                        }
                    };
                let mut md = metadata.clone();
                if let serde_json::Value::Object(m) = &mut md {
                    m.insert("item".into(), name.clone().into());
                    if !point.is_empty() {
                        m.insert(
                            "sweep".into(),
                            serde_json::to_value(point).unwrap_or_default(),
                        );
                    }
                }
                let time_limit = match max_duration_s {
                    Some(m) => Duration::from_secs_f64(m),
                    None => default_time_limit(&action).map_err(|e| invalid(&at, e.to_string()))?,
                };
                units.push(QueueUnit {
                    key,
                    action,
                    policy: pol,
                    metadata: md,
                    time_limit,
                });
            }
        }
        Ok(Self {
            file: file.into(),
            name: section.name.unwrap_or_else(|| {
                file.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            }),
            units,
            suspenders,
            log: section.log,
            webhook: section.webhook,
            blank_beam_on_cleanup: section.blank_beam_on_cleanup,
        })
    }

    /// The dry-run text: every unit with its steps, and the total estimate (scripts are
    /// listed, not costed).
    pub fn dry_run(&self) -> String {
        let mut out = format!("queue {} ({} units):\n", self.name, self.units.len());
        let mut total = PlanSummary {
            duration_s: 0.0,
            frames: 0,
            data_bytes: 0,
            acquisitions: 0,
        };
        for u in &self.units {
            match &u.action {
                Action::Plan(p) => {
                    out.push_str(&format!("[{}] ", u.key));
                    out.push_str(&p.dry_run().unwrap_or_else(|e| e.to_string()));
                    if let Ok(s) = p.summary() {
                        total.add(&s);
                    }
                }
                Action::Script(s) => out.push_str(&format!(
                    "[{}] script {} (not costed: its steps depend on its results)\n",
                    u.key,
                    s.file.display()
                )),
            }
        }
        out.push_str(&format!("total of the plans: {total}\n"));
        out
    }
}

fn policy(
    on_error: Option<OnError>,
    retries: Option<u32>,
    after: Option<OnError>,
    default: ErrorPolicy,
) -> Result<ErrorPolicy, String> {
    let on_error = on_error.unwrap_or(default.on_error);
    let after_retries = after.unwrap_or(default.after_retries);
    if after_retries == OnError::Retry {
        return Err("after_retries must be abort or skip".into());
    }
    let retries = match (on_error, retries) {
        (OnError::Retry, Some(n)) => n,
        (OnError::Retry, None) => default.retries.max(1),
        (_, Some(n)) if n > 0 => {
            return Err(format!("retries = {n} needs on_error = \"retry\""));
        }
        _ => 0,
    };
    Ok(ErrorPolicy {
        on_error,
        retries,
        after_retries,
    })
}

/// The cartesian product of the sweep's arrays, in key order, last key fastest.
fn expand_sweep(
    sweep: &toml::Table,
) -> Result<Vec<BTreeMap<String, toml::Value>>, (String, String)> {
    let mut points = vec![BTreeMap::new()];
    for (k, v) in sweep {
        let toml::Value::Array(vals) = v else {
            return Err((k.clone(), "must be an array of values".into()));
        };
        if vals.is_empty() {
            return Err((k.clone(), "must not be empty".into()));
        }
        if ["plan", "name", "script"].contains(&k.as_str()) {
            return Err((k.clone(), "cannot be swept".into()));
        }
        let mut next = Vec::new();
        for p in &points {
            for v in vals {
                let mut q = p.clone();
                // A swept defocus is one value per point, written as a one-element list
                // for plans that take a list.
                q.insert(k.clone(), v.clone());
                next.push(q);
            }
        }
        points = next;
        if points.len() > 100_000 {
            return Err((k.clone(), "the sweep has more than 100 000 points".into()));
        }
    }
    Ok(points)
}

/// How to run a queue.
#[derive(Clone, Debug)]
pub struct QueueOptions {
    /// Output folder: journal, log and one folder per unit.
    pub out: PathBuf,
    /// Continue from the first unfinished unit of the journal (else start over; an
    /// existing journal is kept under a new name).
    pub resume: bool,
}

/// What a finished queue did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueReport {
    /// Units completed in this run.
    pub completed: u64,
    /// Units skipped after failing (policy `skip`).
    pub skipped: u64,
    /// Units found finished in the journal and not run again.
    pub already_done: u64,
    /// Acquisitions run.
    pub acquisitions: u64,
    /// Frames lost over all acquisitions.
    pub frames_lost: u64,
    /// The journal file.
    pub journal: PathBuf,
}

/// Runs `queue` on `exec`: each unit with its policy, a journal record at each unit's start
/// and end, cleanup after every unit and at the end. Returns the executor for reuse.
///
/// # Errors
/// [`QueueError::Aborted`] when a unit's policy (or the user) aborted the queue; journal
/// and notification set-up errors.
pub fn run_queue(
    queue: &Queue,
    exec: Box<dyn Executor>,
    defaults: &ScanDefaults,
    opts: &QueueOptions,
    control: Control,
) -> (Box<dyn Executor>, Result<QueueReport, QueueError>) {
    let mut session = Session::new(exec, control, None);
    let r = run_queue_inner(queue, &mut session, defaults, opts);
    session.cleanup();
    (session.into_executor(), r)
}

fn run_queue_inner(
    queue: &Queue,
    session: &mut Session,
    defaults: &ScanDefaults,
    opts: &QueueOptions,
) -> Result<QueueReport, QueueError> {
    std::fs::create_dir_all(&opts.out).map_err(|source| QueueError::Output {
        dir: opts.out.clone(),
        during: "creating it",
        source,
    })?;
    let journal_path = opts.out.join("journal.jsonl");
    let qname = std::fs::canonicalize(&queue.file)
        .unwrap_or_else(|_| queue.file.clone())
        .display()
        .to_string();
    let done = if opts.resume {
        let recs = Journal::read(&journal_path)?;
        if let Some(r) = recs.iter().find(|r| r.queue != qname) {
            return Err(QueueError::JournalMismatch {
                journal: journal_path,
                found: r.queue.clone(),
                expected: qname,
            });
        }
        (finished_keys(&recs), earlier_attempts(&recs))
    } else {
        if journal_path.exists() {
            let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
            let old = opts.out.join(format!("journal-{stamp}.jsonl"));
            std::fs::rename(&journal_path, &old).map_err(|source| QueueError::Output {
                dir: opts.out.clone(),
                during: "keeping the old journal",
                source,
            })?;
        }
        Default::default()
    };
    let (done, earlier) = done;
    let mut journal = Journal::open(&journal_path)?;
    let log_path = queue.log.as_ref().map(|l| opts.out.join(l));
    let mut notifier = Notifier::new(log_path.as_deref(), queue.webhook.as_deref())?;
    session.set_log(notifier.session_log());
    session.blank_beam_on_cleanup = queue.blank_beam_on_cleanup;
    for s in &queue.suspenders {
        session.add_suspender(s.clone());
    }
    let mut report = QueueReport {
        journal: journal_path.clone(),
        ..Default::default()
    };
    let mut rec = JournalRecord::new(JournalEvent::QueueStart, &qname);
    rec.metadata = serde_json::json!({ "name": queue.name, "resume": opts.resume, "units": queue.units.len(), "already_done": done.len() });
    journal.append(&rec)?;
    notifier.notify(
        "queue_start",
        &format!(
            "queue {}: {} units, {} already done{}",
            queue.name,
            queue.units.len(),
            done.len(),
            if opts.resume { " (resumed)" } else { "" }
        ),
        serde_json::json!({ "queue": queue.name }),
    );
    for unit in &queue.units {
        if done.contains(&unit.key) {
            report.already_done += 1;
            notifier.log(&format!("[{}] already done (journal)", unit.key));
            continue;
        }
        let dir = opts.out.join(unit.key.replace([':', '#', '/', '\\'], "_"));
        session.set_output_dir(Some(dir.clone()));
        let attempts_allowed = 1 + if unit.policy.on_error == OnError::Retry {
            unit.policy.retries
        } else {
            0
        };
        // Attempts count on from those the journal shows (a unit cut short by a crash or a
        // stop and run again by --resume is attempt N + 1, not 1 again).
        let first = earlier.get(&unit.key).copied().unwrap_or(0);
        let mut attempt = first;
        loop {
            attempt += 1;
            keep_earlier_attempt(&dir, attempt)?;
            let _ = std::fs::create_dir_all(&dir);
            let mut start = JournalRecord::new(JournalEvent::RunStart, &qname);
            start.key = Some(unit.key.clone());
            start.attempt = Some(attempt);
            start.metadata = unit.metadata.clone();
            journal.append(&start)?;
            notifier.log(&format!("[{}] start (attempt {attempt})", unit.key));
            session.set_time_limit(Some(unit.time_limit));
            let result = run_unit(session, unit, defaults);
            session.set_time_limit(None);
            let runs = session.take_outcomes();
            report.acquisitions += runs.len() as u64;
            report.frames_lost += runs.iter().map(|r| r.frames_lost).sum::<u64>();
            let mut end = JournalRecord::new(JournalEvent::RunEnd, &qname);
            end.key = Some(unit.key.clone());
            end.attempt = Some(attempt);
            end.metadata = unit.metadata.clone();
            end.runs = runs;
            match result {
                Ok(()) => {
                    end.status = Some(UnitStatus::Completed);
                    journal.append(&end)?;
                    report.completed += 1;
                    notifier.log(&format!("[{}] completed", unit.key));
                    break;
                }
                Err(e) => {
                    let user_stop = matches!(e, SequenceError::Stopped | SequenceError::Aborted);
                    let msg = e.to_string();
                    end.error = Some(msg.clone());
                    let retry = !user_stop && attempt - first < attempts_allowed;
                    let then = if unit.policy.on_error == OnError::Retry {
                        unit.policy.after_retries
                    } else {
                        unit.policy.on_error
                    };
                    end.status = Some(if user_stop {
                        UnitStatus::Stopped
                    } else if retry {
                        UnitStatus::Failed
                    } else if then == OnError::Skip {
                        UnitStatus::Skipped
                    } else {
                        UnitStatus::Aborted
                    });
                    journal.append(&end)?;
                    session.cleanup();
                    if retry {
                        notifier.notify(
                            "unit_retry",
                            &format!("[{}] failed (attempt {attempt} of {}), retrying: {msg}", unit.key, first + attempts_allowed),
                            serde_json::json!({ "key": unit.key, "attempt": attempt, "error": msg }),
                        );
                        continue;
                    }
                    if !user_stop && then == OnError::Skip {
                        report.skipped += 1;
                        notifier.notify(
                            "unit_skipped",
                            &format!("[{}] failed, skipped: {msg}", unit.key),
                            serde_json::json!({ "key": unit.key, "attempt": attempt, "error": msg }),
                        );
                        break;
                    }
                    let mut qe = JournalRecord::new(JournalEvent::QueueEnd, &qname);
                    qe.status = Some(UnitStatus::Aborted);
                    qe.key = Some(unit.key.clone());
                    qe.error = Some(msg.clone());
                    journal.append(&qe)?;
                    notifier.notify(
                        "queue_aborted",
                        &format!("queue {} aborted at [{}]: {msg}", queue.name, unit.key),
                        serde_json::json!({ "queue": queue.name, "key": unit.key, "error": msg }),
                    );
                    return Err(QueueError::Aborted {
                        key: unit.key.clone(),
                        attempts: attempt,
                        error: msg,
                    });
                }
            }
        }
    }
    let mut qe = JournalRecord::new(JournalEvent::QueueEnd, &qname);
    qe.status = Some(UnitStatus::Completed);
    qe.metadata = serde_json::json!({
        "completed": report.completed, "skipped": report.skipped,
        "already_done": report.already_done, "acquisitions": report.acquisitions,
        "frames_lost": report.frames_lost,
    });
    journal.append(&qe)?;
    notifier.notify(
        "queue_end",
        &format!(
            "queue {} finished: {} completed, {} skipped, {} already done; {} acquisitions, {} frames lost",
            queue.name, report.completed, report.skipped, report.already_done, report.acquisitions, report.frames_lost
        ),
        serde_json::json!({ "queue": queue.name, "completed": report.completed, "skipped": report.skipped, "frames_lost": report.frames_lost }),
    );
    Ok(report)
}

/// The highest attempt number the journal `recs` shows started, per unit key.
fn earlier_attempts(recs: &[JournalRecord]) -> BTreeMap<String, u32> {
    let mut m = BTreeMap::new();
    for r in recs.iter().filter(|r| r.event == JournalEvent::RunStart) {
        if let (Some(k), Some(a)) = (&r.key, r.attempt) {
            let e = m.entry(k.clone()).or_insert(0);
            *e = (*e).max(a);
        }
    }
    m
}

/// Before attempt `attempt` of a unit writes into `dir`, moves what an earlier attempt left
/// there (a partial recording of a killed run, a failed try) to `dir.attempt-N` (N: the
/// attempt before; `dir.earlier` when no earlier attempt is known, e.g. an old queue's
/// output), so that no recording is overwritten.
///
/// # Errors
/// [`QueueError::Output`] when the folder cannot be read or renamed.
fn keep_earlier_attempt(dir: &Path, attempt: u32) -> Result<(), QueueError> {
    let has_files = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(source) => {
            return Err(QueueError::Output {
                dir: dir.into(),
                during: "looking for an earlier attempt's files",
                source,
            });
        }
    };
    if !has_files {
        return Ok(());
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let base = if attempt > 1 {
        format!("{name}.attempt-{}", attempt - 1)
    } else {
        format!("{name}.earlier")
    };
    let mut target = dir.with_file_name(&base);
    let mut n = 1;
    while target.exists() {
        n += 1;
        target = dir.with_file_name(format!("{base}-{n}"));
    }
    std::fs::rename(dir, &target).map_err(|source| QueueError::Output {
        dir: dir.into(),
        during: "keeping an earlier attempt's files",
        source,
    })
}

fn run_unit(
    session: &mut Session,
    unit: &QueueUnit,
    defaults: &ScanDefaults,
) -> Result<(), SequenceError> {
    match &unit.action {
        Action::Plan(p) => {
            let steps = p.steps()?;
            session
                .run_steps(&steps, &mut crate::engine::NoHooks)
                .map(|_| ())
        }
        Action::Script(src) => {
            // The script runs on its own thread with the session; take it out and back.
            let placeholder = Session::new(Box::new(NullExecutor), session.control().clone(), None);
            let owned = std::mem::replace(session, placeholder);
            let (back, r) = run_script(owned, src, defaults);
            *session = back;
            // run_script took the outcomes for its result; put them back for the journal.
            r.map(|outs| session.restore_outcomes(outs))
        }
    }
}

/// Stands in for the executor while a script thread holds the session.
struct NullExecutor;

impl Executor for NullExecutor {
    fn acquire(
        &mut self,
        a: &crate::plan::PlanAcquisition,
    ) -> Result<RunOutcome, crate::engine::ExecError> {
        Err(null(&a.label))
    }
    fn set_microscope(
        &mut self,
        _: &stemflow_core::devices::MicroscopeSettings,
    ) -> Result<stemflow_core::metadata::MicroscopeState, crate::engine::ExecError> {
        Err(null("set microscope"))
    }
    fn read_microscope(
        &mut self,
    ) -> Result<stemflow_core::metadata::MicroscopeState, crate::engine::ExecError> {
        Err(null("read microscope"))
    }
    fn last_results(&self) -> BTreeMap<String, f64> {
        BTreeMap::new()
    }
    fn read_monitor(&mut self, name: &str) -> Result<f64, crate::engine::ExecError> {
        Err(null(name))
    }
    fn cleanup(&mut self, _: bool) -> Result<(), crate::engine::ExecError> {
        Ok(())
    }
}

fn null(what: &str) -> crate::engine::ExecError {
    crate::engine::ExecError::Device {
        operation: what.into(),
        message: "no instrument (held by a script thread)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::FakeExecutor;
    use crate::plan::Stem4dScanPlan;
    use std::io::{Read, Write};
    use stemflow_core::{DType, NavShape, SigShape};

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

    struct Scratch(PathBuf);
    impl Scratch {
        fn new(name: &str) -> Self {
            let p =
                std::env::temp_dir().join(format!("stemflow-queue-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn parse(text: &str) -> Result<Queue, QueueError> {
        Queue::parse(Path::new("q.toml"), text, &defaults())
    }

    #[test]
    fn validation_names_file_key_and_problem() {
        let cases = [
            (
                "[[item]]\nplan = \"stem_4d_scan\"\nnav_shape = \"0x4\"",
                "item[0] \"item0\".nav_shape",
                "≥ 1",
            ),
            (
                "[[item]]\nname = \"a\"\nplan = \"spiral\"",
                "item[0] \"a\".plan",
                "unknown plan",
            ),
            (
                "[[item]]\nplan = \"stem_4d_scan\"\nnavshape = 3",
                "item[0] \"item0\"",
                "navshape",
            ),
            (
                "[[item]]\nplan = \"stem_4d_scan\"\non_error = \"maybe\"",
                "on_error",
                "maybe",
            ),
            (
                "[[item]]\nplan = \"stem_4d_scan\"\nretries = 2",
                "on_error",
                "retry",
            ),
            (
                "[[item]]\nplan = \"stem_4d_scan\"\nsweep = { dwell_time_s = 1 }",
                "sweep.dwell_time_s",
                "array",
            ),
            (
                "[queue]\nwebhook = \"ftp://x\"\n[[item]]\nplan = \"stem_4d_scan\"",
                "queue.webhook",
                "http",
            ),
            ("[[item]]\nscript = \"nope.rhai\"", "script", "cannot read"),
            ("[[item]]\nname = \"x\"", "item[0] \"x\"", "plan"),
            (
                "[queue]\nname = 3\n[[item]]\nplan = \"stem_4d_scan\"",
                "queue",
                "string",
            ),
            (
                "[[item]]\nplan = \"stem_4d_scan\"\n[[item]]\nplan = \"defocus_series\"\nsweep = { exposure_s = [1e-3, 2e-3] }",
                "item[1] \"item1\".defocus_m",
                "missing",
            ),
            ("[[item]\nplan = 1", "(file)", "line"),
            (
                "[extra]\n[[item]]\nplan = \"stem_4d_scan\"",
                "extra",
                "unknown section",
            ),
        ];
        for (text, key, problem) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with("q.toml: key `"), "{text}: {e}");
            assert!(e.contains(key) && e.contains(problem), "{text}: {e}");
        }
    }

    #[test]
    fn sweeps_expand_and_dry_run_totals() {
        let q = parse(
            "[[item]]\nname = \"f\"\nplan = \"stem_4d_scan\"\nsweep = { defocus_m = [-1e-8, 0, 1e-8], dwell_time_s = [1e-3, 2e-3] }\nmetadata = { sample = \"Au\" }",
        )
        .unwrap();
        assert_eq!(q.units.len(), 6);
        assert_eq!(q.units[5].key, "000:f#5");
        assert_eq!(q.units[0].metadata["sample"], "Au");
        assert_eq!(q.units[1].metadata["sweep"]["dwell_time_s"], 2e-3);
        let Action::Plan(p) = &q.units[1].action else {
            panic!()
        };
        assert_eq!(p.base().dwell_time_s, 2e-3);
        assert_eq!(p.base().microscope.as_ref().unwrap().defocus_m, Some(-1e-8));
        let text = q.dry_run();
        assert!(
            text.contains("total of the plans: estimated")
                && text.contains("6 acquisition(s), 96 frames"),
            "{text}"
        );
    }

    fn run(
        q: &Queue,
        fake: &FakeExecutor,
        out: &Path,
        resume: bool,
    ) -> Result<QueueReport, QueueError> {
        let opts = QueueOptions {
            out: out.into(),
            resume,
        };
        run_queue(
            q,
            Box::new(fake.clone()),
            &defaults(),
            &opts,
            Control::default(),
        )
        .1
    }

    #[test]
    fn policies_retry_skip_abort() {
        let s = Scratch::new("policy");
        let q = parse(
            "[[item]]\nname = \"r\"\nplan = \"stem_4d_scan\"\non_error = \"retry\"\nretries = 2\n\
             [[item]]\nname = \"s\"\nplan = \"dark_reference\"\non_error = \"skip\"\n\
             [[item]]\nname = \"after\"\nplan = \"stem_4d_scan\"\n\
             [[item]]\nname = \"a\"\nplan = \"dark_reference\"\n\
             [[item]]\nname = \"never\"\nplan = \"stem_4d_scan\"",
        )
        .unwrap();
        let fake = FakeExecutor {
            fail_labels: vec!["dark".into()],
            fail_first: std::sync::Arc::new(std::sync::Mutex::new(2)),
            ..Default::default()
        };
        let e = run(&q, &fake, &s.0, false).unwrap_err().to_string();
        assert!(
            e.contains("003:a") && e.contains("fake detector failure"),
            "{e}"
        );
        let acquires = fake
            .calls()
            .iter()
            .filter(|c| c.starts_with("acquire scan"))
            .count();
        assert_eq!(acquires, 4, "3 attempts of r, then after; never not run");
        let recs = Journal::read(&s.0.join("journal.jsonl")).unwrap();
        let ends: Vec<_> = recs
            .iter()
            .filter(|r| r.event == JournalEvent::RunEnd)
            .map(|r| (r.key.clone().unwrap(), r.status.unwrap()))
            .collect();
        use UnitStatus::*;
        assert_eq!(
            ends,
            vec![
                ("000:r".into(), Failed),
                ("000:r".into(), Failed),
                ("000:r".into(), Completed),
                ("001:s".into(), Skipped),
                ("002:after".into(), Completed),
                ("003:a".into(), Aborted)
            ]
        );
        let failed = recs
            .iter()
            .find(|r| r.key.as_deref() == Some("001:s") && r.event == JournalEvent::RunEnd)
            .unwrap();
        assert_eq!(failed.runs[0].exit_status, "fault");
        assert_eq!(failed.runs[0].frames_lost, 16);
        // Resume: finished units are not run again; the aborted one is.
        let fake2 = FakeExecutor::default();
        let rep = run(&q, &fake2, &s.0, true).unwrap();
        assert_eq!((rep.already_done, rep.completed), (3, 2));
        assert_eq!(
            fake2
                .calls()
                .iter()
                .filter(|c| c.starts_with("acquire"))
                .cloned()
                .collect::<Vec<_>>(),
            vec!["acquire dark 4x4", "acquire scan 4x4"]
        );
        // Without --resume a new journal starts; the old one is kept under a new name.
        run(&q, &FakeExecutor::default(), &s.0, false).unwrap();
        let kept = std::fs::read_dir(&s.0)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("journal-"))
            .count();
        assert_eq!(kept, 1);
        let fresh = Journal::read(&s.0.join("journal.jsonl")).unwrap();
        assert_eq!(finished_keys(&fresh).len(), 5);
        assert_eq!(
            fresh
                .iter()
                .filter(|r| r.event == JournalEvent::QueueStart)
                .count(),
            1
        );
        // Cleanup ran after the failures and at the end.
        assert!(
            fake.calls()
                .iter()
                .filter(|c| c.starts_with("cleanup"))
                .count()
                >= 4
        );
    }

    #[test]
    fn a_cancelled_acquisition_stops_the_queue_and_resume_runs_its_unit_again() {
        let s = Scratch::new("cancel");
        let q = parse(
            "[[item]]\nname = \"first\"\nplan = \"stem_4d_scan\"\n\
             [[item]]\nname = \"d\"\nplan = \"dark_reference\"\non_error = \"retry\"\nretries = 2\n\
             [[item]]\nname = \"last\"\nplan = \"stem_4d_scan\"",
        )
        .unwrap();
        // The dark reference (its unit's last step) ends cancelled, as after Ctrl-C: no
        // retry, the unit is journaled stopped, not completed, and the queue ends.
        let fake = FakeExecutor {
            cancel_labels: vec!["dark".into()],
            ..Default::default()
        };
        run(&q, &fake, &s.0, false).unwrap_err();
        let acquires: Vec<_> = fake
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("acquire"))
            .collect();
        assert_eq!(acquires, vec!["acquire scan 4x4", "acquire dark 4x4"]);
        let recs = Journal::read(&s.0.join("journal.jsonl")).unwrap();
        let ends: Vec<_> = recs
            .iter()
            .filter(|r| r.event == JournalEvent::RunEnd)
            .map(|r| (r.key.clone().unwrap(), r.status.unwrap()))
            .collect();
        assert_eq!(
            ends,
            vec![
                ("000:first".into(), UnitStatus::Completed),
                ("001:d".into(), UnitStatus::Stopped)
            ]
        );
        let stopped = recs
            .iter()
            .find(|r| r.key.as_deref() == Some("001:d") && r.event == JournalEvent::RunEnd)
            .unwrap();
        assert_eq!(stopped.runs[0].exit_status, "cancelled");
        // Resume: the cancelled unit runs again, then the rest.
        let fake2 = FakeExecutor::default();
        let rep = run(&q, &fake2, &s.0, true).unwrap();
        assert_eq!((rep.already_done, rep.completed), (1, 2));
        assert_eq!(
            fake2
                .calls()
                .into_iter()
                .filter(|c| c.starts_with("acquire"))
                .collect::<Vec<_>>(),
            vec!["acquire dark 4x4", "acquire scan 4x4"]
        );
    }

    #[test]
    fn a_stuck_setting_fails_the_unit_naming_setting_requested_actual() {
        let s = Scratch::new("stuck");
        let q = parse(
            "[[item]]\nname = \"df\"\nplan = \"defocus_series\"\ndefocus_m = [1e-8]\non_error = \"skip\"\n[[item]]\nname = \"next\"\nplan = \"stem_4d_scan\"",
        )
        .unwrap();
        let fake = FakeExecutor {
            stuck_defocus: Some(0.0),
            ..Default::default()
        };
        let rep = run(&q, &fake, &s.0, false).unwrap();
        assert_eq!((rep.skipped, rep.completed), (1, 1));
        let recs = Journal::read(&s.0.join("journal.jsonl")).unwrap();
        let e = recs.iter().find_map(|r| r.error.clone()).unwrap();
        assert!(
            e.contains("defocus_m")
                && e.contains("requested 0.00000001")
                && e.contains("reports 0"),
            "{e}"
        );
    }

    /// A unit cut short by a crash (its `run_start` journaled, no `run_end`, a partial file
    /// in its folder): `--resume` runs it as attempt 2, not 1 again, and keeps the partial
    /// file under `<unit>.attempt-1` instead of overwriting it.
    #[test]
    fn resume_counts_attempts_on_and_keeps_a_killed_attempts_files() {
        let s = Scratch::new("resume-attempts");
        let q = parse("[[item]]\nname = \"a\"\nplan = \"stem_4d_scan\"\n").unwrap();
        let out = s.0.join("out");
        let unit_dir = out.join("000_a");
        std::fs::create_dir_all(&unit_dir).unwrap();
        std::fs::create_dir_all(unit_dir.join("001_scan")).unwrap();
        std::fs::write(unit_dir.join("001_scan").join("recording.hspy"), b"partial").unwrap();
        let mut j = Journal::open(&out.join("journal.jsonl")).unwrap();
        j.append(&JournalRecord::new(JournalEvent::QueueStart, "q.toml"))
            .unwrap();
        let mut start = JournalRecord::new(JournalEvent::RunStart, "q.toml");
        start.key = Some("000:a".into());
        start.attempt = Some(1);
        j.append(&start).unwrap();
        drop(j);
        let fake = FakeExecutor::default();
        let rep = run(&q, &fake, &out, true).unwrap();
        assert_eq!(rep.completed, 1);
        let recs = Journal::read(&out.join("journal.jsonl")).unwrap();
        let attempts: Vec<_> = recs
            .iter()
            .filter(|r| r.event == JournalEvent::RunStart && r.key.as_deref() == Some("000:a"))
            .map(|r| r.attempt)
            .collect();
        assert_eq!(attempts, [Some(1), Some(2)], "{recs:?}");
        let kept = out
            .join("000_a.attempt-1")
            .join("001_scan")
            .join("recording.hspy");
        assert_eq!(
            std::fs::read(&kept).unwrap(),
            b"partial",
            "{}",
            kept.display()
        );
    }

    /// A script stuck in `loop {}` or in `sleep(1e9)` fails at its unit's time limit
    /// (`max_duration_s`), journaled with the limit in its error, and the queue goes on
    /// with the next unit per the policy; without `max_duration_s` a plan unit gets twice
    /// its estimate plus the margin, a script the fixed limit.
    #[test]
    fn a_stuck_script_fails_at_its_time_limit_and_the_queue_goes_on() {
        let s = Scratch::new("limit");
        std::fs::write(s.0.join("spin.rhai"), "loop { }").unwrap();
        std::fs::write(s.0.join("nap.rhai"), "sleep(1e9);").unwrap();
        let text = "[[item]]\nname = \"spin\"\nscript = \"spin.rhai\"\nmax_duration_s = 0.5\non_error = \"skip\"\n\
                    [[item]]\nname = \"nap\"\nscript = \"nap.rhai\"\nmax_duration_s = 0.5\non_error = \"skip\"\n\
                    [[item]]\nname = \"scan\"\nplan = \"stem_4d_scan\"\n\
                    [[item]]\nname = \"other\"\nscript = \"nap.rhai\"\n";
        let qf = s.0.join("q.toml");
        std::fs::write(&qf, text).unwrap();
        let q = Queue::load(&qf, &defaults()).unwrap();
        assert_eq!(q.units[0].time_limit, Duration::from_millis(500));
        let Action::Plan(plan) = &q.units[2].action else {
            panic!("unit 2 is a plan");
        };
        let estimate = plan.summary().unwrap().duration_s;
        assert_eq!(
            q.units[2].time_limit,
            Duration::from_secs_f64(2.0 * estimate + PLAN_TIME_MARGIN_S)
        );
        assert_eq!(
            q.units[3].time_limit,
            Duration::from_secs_f64(SCRIPT_TIME_LIMIT_S)
        );
        // Run only the first three: the fourth would sleep for its hour.
        let mut q3 = q.clone();
        q3.units.truncate(3);
        let fake = FakeExecutor::default();
        let out = s.0.join("out");
        let t0 = std::time::Instant::now();
        let rep = run(&q3, &fake, &out, false).unwrap();
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "took {:?}",
            t0.elapsed()
        );
        assert_eq!((rep.skipped, rep.completed), (2, 1));
        let recs = Journal::read(&out.join("journal.jsonl")).unwrap();
        for key in ["000:spin", "001:nap"] {
            let end = recs
                .iter()
                .find(|r| r.event == JournalEvent::RunEnd && r.key.as_deref() == Some(key))
                .unwrap_or_else(|| panic!("no run_end for {key}: {recs:?}"));
            assert_eq!(end.status, Some(UnitStatus::Skipped), "{end:?}");
            let e = end.error.as_deref().unwrap_or_default();
            assert!(e.contains("time limit of 0.5 s"), "{key}: {e}");
        }
        // A malformed limit names the key.
        let e = parse("[[item]]\nplan = \"stem_4d_scan\"\nmax_duration_s = -1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_duration_s") && e.contains("-1"), "{e}");
    }

    #[test]
    fn scripts_run_as_queue_items_with_params_and_notify_a_webhook() {
        let s = Scratch::new("script");
        std::fs::write(
            s.0.join("focus.rhai"),
            "for i in 0..count { run_plan(\"stem_4d_scan\", #{ nav_shape: shape }); }",
        )
        .unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut bodies = Vec::new();
            l.set_nonblocking(false).unwrap();
            for _ in 0..2 {
                let (mut c, _) = l.accept().unwrap();
                c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .unwrap();
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = c.read(&mut buf).unwrap();
                    got.extend_from_slice(&buf[..n]);
                    let t = String::from_utf8_lossy(&got);
                    if n == 0 || t.trim_end().ends_with('}') {
                        break;
                    }
                }
                c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .unwrap();
                bodies.push(String::from_utf8(got).unwrap());
            }
            bodies
        });
        let text = format!(
            "[queue]\nlog = \"queue.log\"\nwebhook = \"http://127.0.0.1:{port}/hook\"\n[[item]]\nname = \"sc\"\nscript = \"focus.rhai\"\nparams = {{ shape = \"2x3\" }}\nsweep = {{ count = [1, 2] }}"
        );
        let qf = s.0.join("q.toml");
        std::fs::write(&qf, text).unwrap();
        let q = Queue::load(&qf, &defaults()).unwrap();
        assert_eq!(q.units.len(), 2);
        let fake = FakeExecutor::default();
        let out = s.0.join("out");
        let rep = run(&q, &fake, &out, false).unwrap();
        assert_eq!(rep.acquisitions, 3);
        let bodies = server.join().unwrap();
        assert!(
            bodies[0].contains("\"event\":\"queue_start\""),
            "{}",
            bodies[0]
        );
        assert!(
            bodies[1].contains("\"event\":\"queue_end\""),
            "{}",
            bodies[1]
        );
        let log = std::fs::read_to_string(out.join("queue.log")).unwrap();
        assert!(
            log.contains("[000:sc#1] completed") && log.contains("finished"),
            "{log}"
        );
        let recs = Journal::read(&out.join("journal.jsonl")).unwrap();
        let last_unit = recs
            .iter()
            .rfind(|r| r.event == JournalEvent::RunEnd)
            .unwrap();
        assert_eq!(last_unit.runs.len(), 2);
        assert_eq!(last_unit.runs[1].frames_expected, 6);
        assert!(
            last_unit.runs[1]
                .output_file
                .as_ref()
                .unwrap()
                .ends_with("000_sc_1/001_scan/recording.hspy")
        );
    }
}
