//! ZMTP 3.x as the DECTRIS `PULL` side reads it (protocols.md §2.1; RFC 23, RFC 37): the
//! peer's greeting, then frames — flags, size field, body — with the commands parsed. The
//! walk follows the receiver's: a size over the limit is refused before any allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stemflow_drivers::dectris::zmtp::{self, Command, FrameHead};

fuzz_target!(|data: &[u8]| {
    if zmtp::check_greeting("fuzz", data).is_err() {
        return;
    }
    let mut rest = &data[64..];
    while let Some((&flags, tail)) = rest.split_first() {
        let n = FrameHead::size_len(flags);
        let Some(size) = tail.get(..n) else { return };
        let Ok(head) = FrameHead::decode("fuzz", flags, size) else {
            return;
        };
        let Some(body) = tail[n..].get(..head.len) else {
            return;
        };
        // An `ERROR` command ends the connection; `PING` and others are read past.
        if head.command
            && let Some(Command::Error { .. }) = zmtp::parse_command(body)
        {
            return;
        }
        rest = &tail[n + head.len..];
    }
});
