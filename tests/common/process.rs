//! Child processes for tests: started in their own process group and killed, group and all,
//! on every path (normal end, failed assertion, panic), with deadline-bounded waits and their
//! output kept for failure messages.
//!
//! Killing the group matters for Python children: LiberTEM-live's executor starts worker
//! processes, which would outlive a parent killed on its own.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often deadline-bounded waits look at the child.
const POLL: Duration = Duration::from_millis(20);

/// A running child process; dropping it kills its whole process group and reaps it.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// Starts `cmd` (stdin from /dev/null) as the leader of a new process group.
    ///
    /// # Panics
    /// When the program cannot be started, naming it.
    pub fn spawn(name: &str, cmd: &mut Command) -> Self {
        cmd.stdin(Stdio::null());
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Self {
            name: name.to_string(),
            child,
            status: None,
        }
    }

    /// The name given at spawn (for messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's process id (e.g. to look at its `/proc` entries).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the child has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits at most `timeout` for the child to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Takes the child's piped stderr and copies it, line by line, into a [`LogTap`] on a
    /// background thread (which also keeps the pipe from filling up and blocking the child).
    ///
    /// # Panics
    /// When stderr was not piped.
    pub fn tap_stderr(&mut self) -> LogTap {
        let stderr = self
            .child
            .stderr
            .take()
            .unwrap_or_else(|| panic!("{}: stderr was not piped", self.name));
        LogTap::start(&self.name, stderr)
    }

    /// As [`tap_stderr`](Self::tap_stderr), for stdout.
    ///
    /// # Panics
    /// When stdout was not piped.
    pub fn tap_stdout(&mut self) -> LogTap {
        let stdout = self
            .child
            .stdout
            .take()
            .unwrap_or_else(|| panic!("{}: stdout was not piped", self.name));
        LogTap::start(&self.name, stdout)
    }

    /// Ctrl-C: sends SIGINT to the child itself (not its group).
    ///
    /// # Panics
    /// When kill(2) fails, naming the pid.
    #[cfg(unix)]
    pub fn sigint(&self) {
        self.signal(libc::SIGINT);
    }

    /// Sends the signal `sig` (`libc::SIGTERM`, …) to the child itself (not its group).
    ///
    /// # Panics
    /// When kill(2) fails, naming the pid and the signal.
    #[cfg(unix)]
    pub fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid fits in i32");
        // SAFETY: kill(2) on the pid of our child, not yet reaped (we hold it); it touches
        // no memory of ours.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "{}: kill -{sig} {pid} failed", self.name);
    }

    fn kill_group(&mut self) {
        #[cfg(unix)]
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) with a negative pid signals the process group we created at spawn;
            // it touches no memory of ours.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Also when the leader has exited: its workers may still be running.
        self.kill_group();
        let _ = self.child.wait();
    }
}

/// Lines a child wrote to a pipe, collected on a background thread.
#[derive(Debug)]
pub struct LogTap {
    text: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl LogTap {
    fn start(name: &str, pipe: impl Read + Send + 'static) -> Self {
        let text = Arc::new(Mutex::new(String::new()));
        let sink = text.clone();
        let reader = std::thread::Builder::new()
            .name(format!("{name}-log"))
            .spawn(move || {
                let mut lines = BufReader::new(pipe);
                let mut line = Vec::new();
                // Byte lines, not `lines()`: a progress bar may write invalid UTF-8 or `\r`.
                while lines.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                    let mut t = sink.lock().unwrap_or_else(|e| e.into_inner());
                    t.push_str(&String::from_utf8_lossy(&line));
                    line.clear();
                }
            })
            .ok();
        Self { text, reader }
    }

    /// Everything collected so far.
    pub fn text(&self) -> String {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Polls the collected text with `find` until it returns a value or `timeout` passes, or
    /// `alive` returns false (the child exited).
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        mut alive: impl FnMut() -> bool,
        mut find: impl FnMut(&str) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = find(&self.text()) {
                return Some(v);
            }
            if Instant::now() >= deadline || !alive() {
                // One last look: the line may have landed just before the exit.
                return find(&self.text());
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for LogTap {
    fn drop(&mut self) {
        // The thread ends when the pipe closes, i.e. once the child (group) is gone; the
        // ChildGuard is dropped first by the tests, but never block here regardless.
        if let Some(h) = self.reader.take()
            && h.is_finished()
        {
            let _ = h.join();
        }
    }
}
