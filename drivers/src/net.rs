//! Socket facts the receivers decide on.

use std::net::TcpStream;

/// Bytes received on `stream` and not yet read (the kernel's receive queue, `FIONREAD`);
/// `None` where that cannot be asked (other systems, or the call failed). The receivers hand
/// a partly filled stack over as soon as nothing more is waiting, so that at slow frame rates
/// a frame is processed when it arrives, not when the stack fills many frame times later.
pub(crate) fn pending_bytes(stream: &TcpStream) -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD on a valid socket descriptor writes one c_int.
        let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &mut n) };
        (rc == 0).then_some(n.max(0) as usize)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = stream;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    #[test]
    fn pending_bytes_counts_what_arrived_and_was_not_read() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let mut peer =
            TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let (mut ours, _) = listener.accept().expect("accept");
        assert_eq!(pending_bytes(&ours), Some(0));
        peer.write_all(&[1u8; 1000]).expect("write");
        let deadline = Instant::now() + Duration::from_secs(5);
        while pending_bytes(&ours) != Some(1000) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(pending_bytes(&ours), Some(1000));
        let mut b = [0u8; 600];
        ours.read_exact(&mut b).expect("read");
        assert_eq!(pending_bytes(&ours), Some(400));
    }
}
