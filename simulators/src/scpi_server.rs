//! The text-protocol server behind the SCPI-style instrument simulators: newline-terminated
//! program messages over TCP (a thread per connection, as instruments that accept several
//! sockets do) and over a pseudo-terminal pair (the serial-port case), each line handed to
//! the instrument's handler, each response written back with a newline terminator.

use crate::SimError;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often blocked reads and accepts look at the stop flag.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// An instrument: one program message line in, its responses out.
pub(crate) type Handler = Arc<dyn Fn(&str) -> Vec<String> + Send + Sync>;

/// A running server; [`shutdown`](Self::shutdown) (or drop) stops it.
pub(crate) struct ScpiServer {
    pub(crate) addr: SocketAddr,
    pub(crate) pty_path: Option<String>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl ScpiServer {
    /// Binds `host:port` (0 = ephemeral) and, with `pty`, opens a pseudo-terminal pair.
    pub(crate) fn start(
        device: &str,
        host: IpAddr,
        port: u16,
        pty: bool,
        handler: Handler,
    ) -> Result<Self, SimError> {
        let io_err = |during: String| {
            let device = device.to_string();
            move |source| SimError::Io {
                device,
                during,
                source,
            }
        };
        let bind = SocketAddr::new(host, port);
        let listener = TcpListener::bind(bind).map_err(io_err(format!("binding {bind}")))?;
        let addr = listener
            .local_addr()
            .map_err(io_err(format!("binding {bind}")))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err(format!("setting up {addr}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (h, st) = (handler.clone(), stop.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("{device}-tcp"))
                .spawn(move || accept_loop(&listener, &h, &st))
                .map_err(io_err("starting a thread".into()))?,
        );
        let mut pty_path = None;
        if pty {
            let (master, path) = pty::open().map_err(io_err("opening a pseudo-terminal".into()))?;
            pty_path = Some(path);
            let (h, st) = (handler, stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("{device}-pty"))
                    .spawn(move || {
                        let mut master = master;
                        serve(&mut master, &h, &st);
                    })
                    .map_err(io_err("starting a thread".into()))?,
            );
        }
        Ok(Self {
            addr,
            pty_path,
            stop,
            threads,
        })
    }

    /// Stops accepting and serving; joins the listener and pseudo-terminal threads
    /// (connection threads end within [`POLL`]).
    pub(crate) fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ScpiServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: &TcpListener, handler: &Handler, stop: &Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(POLL));
                let _ = stream.set_nodelay(true);
                let (h, st) = (handler.clone(), stop.clone());
                let _ = std::thread::Builder::new()
                    .name("scpi-conn".into())
                    .spawn(move || {
                        let mut stream: TcpStream = stream;
                        serve(&mut stream, &h, &st);
                    });
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Serves one connection until it closes or the server stops.
fn serve(stream: &mut (impl Read + Write), handler: &Handler, stop: &AtomicBool) {
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(_) => return,
        }
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            let text = String::from_utf8_lossy(&line).trim().to_string();
            for reply in handler(&text) {
                if stream.write_all(reply.as_bytes()).is_err()
                    || stream.write_all(b"\n").is_err()
                    || stream.flush().is_err()
                {
                    return;
                }
            }
        }
    }
}

#[cfg(unix)]
mod pty {
    //! A pseudo-terminal pair: the simulator serves the master side; clients open the slave
    //! path as a serial port.

    use std::fs::File;
    use std::io::{self, Read, Write};
    use std::os::fd::{FromRawFd, OwnedFd};

    /// The master side, read with a poll so the serving loop sees the stop flag; the slave
    /// descriptor stays open so the pair survives clients that close and reopen it.
    pub struct Master {
        file: File,
        _slave: OwnedFd,
    }

    impl Read for Master {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            use std::os::fd::AsRawFd;
            let mut pfd = libc::pollfd {
                fd: self.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, for the duration of the call.
            let r = unsafe { libc::poll(&mut pfd, 1, super::POLL.as_millis() as i32) };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            if r == 0 || pfd.revents & libc::POLLIN == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            match self.file.read(buf) {
                // EIO: no client has the slave open at the moment; not the end.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                    Err(io::ErrorKind::WouldBlock.into())
                }
                r => r,
            }
        }
    }

    impl Write for Master {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.file.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.file.flush()
        }
    }

    /// Opens a pair in raw mode (no echo, no line editing, no CR/LF translation).
    pub fn open() -> io::Result<(Master, String)> {
        let mut master: libc::c_int = -1;
        let mut slave: libc::c_int = -1;
        // SAFETY: openpty writes two descriptors; the name, termios and winsize are optional.
        let r = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just opened by openpty and are owned here.
        let (master, slave) = unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        use std::os::fd::AsRawFd;
        // SAFETY: termios is plain data; tcgetattr fills it from the valid slave descriptor.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(slave.as_raw_fd(), &mut t) != 0 {
                return Err(io::Error::last_os_error());
            }
            libc::cfmakeraw(&mut t);
            if libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let mut name = vec![0 as libc::c_char; 256];
        // SAFETY: the buffer is 256 bytes, as passed.
        let r = unsafe { libc::ttyname_r(slave.as_raw_fd(), name.as_mut_ptr(), name.len()) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        // SAFETY: ttyname_r wrote a NUL-terminated string into the buffer.
        let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        Ok((
            Master {
                file: master,
                _slave: slave,
            },
            path,
        ))
    }
}

#[cfg(not(unix))]
mod pty {
    //! Pseudo-terminals exist on Unix only.
    use std::io;

    pub struct Master;

    impl io::Read for Master {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Ok(0)
        }
    }

    impl io::Write for Master {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    pub fn open() -> io::Result<(Master, String)> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "pseudo-terminals need Unix",
        ))
    }
}
