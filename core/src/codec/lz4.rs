//! Our LZ4 *block* codec (the raw block format, no frame header): the decoder checks every
//! length and offset against the input and the output before touching memory, the encoder is
//! a greedy single-probe hash compressor that honours the format's end-of-block rules, so
//! its output is accepted by the reference `LZ4_decompress_safe`.

use std::ptr;

/// Why an LZ4 block did not decode. Offsets are byte positions in the block's input
/// (`at`) or output (`produced`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Lz4Error {
    /// The input ends inside a sequence (token, length byte, literals or offset).
    #[error("input ends at byte {at} inside a sequence ({what})")]
    Truncated {
        /// Input position where more bytes were needed.
        at: usize,
        /// The part of the sequence being read.
        what: &'static str,
    },
    /// A literal run or match would write past the end of the output.
    #[error("{what} of {len} bytes at output byte {produced} overruns the {capacity}-byte output")]
    Overrun {
        /// `literals` or `match`.
        what: &'static str,
        /// Length of the run, bytes.
        len: usize,
        /// Output bytes already produced.
        produced: usize,
        /// Output size, bytes.
        capacity: usize,
    },
    /// A match offset is 0 or points before the start of the output.
    #[error(
        "match offset {offset} at input byte {at} points before the output start ({produced} bytes produced)"
    )]
    Offset {
        /// The offset read, bytes.
        offset: usize,
        /// Input position of the offset.
        at: usize,
        /// Output bytes produced so far.
        produced: usize,
    },
    /// The block ended before filling the output.
    #[error("block decodes to {produced} bytes, expected {expected}")]
    Underrun {
        /// Bytes produced.
        produced: usize,
        /// Bytes expected.
        expected: usize,
    },
}

/// Decodes one raw LZ4 block `src` into `dst`, which it must fill exactly.
///
/// # Errors
/// [`Lz4Error`] for truncated input, runs that overrun `dst`, offsets before its start, or an
/// output shorter than `dst`. Never reads or writes out of bounds.
pub fn decompress(src: &[u8], dst: &mut [u8]) -> Result<(), Lz4Error> {
    let ilen = src.len();
    let olen = dst.len();
    let s = src.as_ptr();
    let d = dst.as_mut_ptr();
    let mut ip = 0usize;
    let mut op = 0usize;
    loop {
        if ip >= ilen {
            return Err(Lz4Error::Truncated {
                at: ip,
                what: "token",
            });
        }
        let token = src[ip];
        ip += 1;
        // Shortcut for the common short sequence (< 15 literals, match < 19 bytes) far from
        // both ends: fixed-size copies, fewer checks (what the reference decoder also does).
        if token < 0xF0 && token & 15 != 15 && ilen - ip >= 16 + 2 && olen - op >= 16 + 32 {
            let lit = (token >> 4) as usize;
            // SAFETY: 16 bytes readable at ip and writable at op (checked above).
            unsafe {
                ptr::write_unaligned(
                    d.add(op) as *mut [u8; 16],
                    ptr::read_unaligned(s.add(ip) as *const [u8; 16]),
                )
            };
            ip += lit;
            op += lit;
            // ip <= old ip + 14, so the 2 offset bytes are inside the input.
            let offset = u16::from_le_bytes([src[ip], src[ip + 1]]) as usize;
            if offset == 0 || offset > op {
                return Err(Lz4Error::Offset {
                    offset,
                    at: ip,
                    produced: op,
                });
            }
            ip += 2;
            let mlen = (token & 15) as usize + 4;
            // SAFETY: op + 32 <= olen (op grew by at most 14 of the 48 checked bytes), the
            // offset is within the output; 16-byte chunks need offset >= 16.
            unsafe {
                if offset >= 16 {
                    let m = op - offset;
                    ptr::write_unaligned(
                        d.add(op) as *mut [u8; 16],
                        ptr::read_unaligned(d.add(m) as *const [u8; 16]),
                    );
                    if mlen > 16 {
                        ptr::write_unaligned(
                            d.add(op + 16) as *mut [u8; 16],
                            ptr::read_unaligned(d.add(m + 16) as *const [u8; 16]),
                        );
                    }
                } else {
                    copy_match(d, op, offset, mlen, olen);
                }
            }
            op += mlen;
            if ip >= ilen {
                return Err(Lz4Error::Truncated {
                    at: ip,
                    what: "token",
                });
            }
            continue;
        }
        let mut lit = (token >> 4) as usize;
        if lit == 15 {
            lit += read_len(src, &mut ip, "literal length")?;
        }
        if lit > ilen - ip {
            return Err(Lz4Error::Truncated {
                at: ilen,
                what: "literals",
            });
        }
        if lit > olen - op {
            return Err(Lz4Error::Overrun {
                what: "literals",
                len: lit,
                produced: op,
                capacity: olen,
            });
        }
        // SAFETY: ip + lit <= ilen and op + lit <= olen were checked above; the 16-byte fast
        // path additionally checks that 16 bytes are available on both sides.
        unsafe {
            if lit <= 16 && ip + 16 <= ilen && op + 16 <= olen {
                ptr::copy_nonoverlapping(s.add(ip), d.add(op), 16);
            } else {
                ptr::copy_nonoverlapping(s.add(ip), d.add(op), lit);
            }
        }
        ip += lit;
        op += lit;
        if ip == ilen {
            break; // the last sequence has literals only
        }
        if ilen - ip < 2 {
            return Err(Lz4Error::Truncated {
                at: ip,
                what: "match offset",
            });
        }
        let offset = u16::from_le_bytes([src[ip], src[ip + 1]]) as usize;
        if offset == 0 || offset > op {
            return Err(Lz4Error::Offset {
                offset,
                at: ip,
                produced: op,
            });
        }
        ip += 2;
        let mut mlen = (token & 15) as usize + 4;
        if token & 15 == 15 {
            mlen += read_len(src, &mut ip, "match length")?;
        }
        if mlen > olen - op {
            return Err(Lz4Error::Overrun {
                what: "match",
                len: mlen,
                produced: op,
                capacity: olen,
            });
        }
        // SAFETY: 1 <= offset <= op and op + mlen <= olen (checked above).
        unsafe { copy_match(d, op, offset, mlen, olen) };
        op += mlen;
    }
    if op != olen {
        return Err(Lz4Error::Underrun {
            produced: op,
            expected: olen,
        });
    }
    Ok(())
}

/// Reads an LZ4 length extension (bytes added while they are 255).
#[inline(always)]
fn read_len(src: &[u8], ip: &mut usize, what: &'static str) -> Result<usize, Lz4Error> {
    let mut n = 0usize;
    loop {
        let Some(&b) = src.get(*ip) else {
            return Err(Lz4Error::Truncated { at: *ip, what });
        };
        *ip += 1;
        n += b as usize;
        if b != 255 {
            return Ok(n);
        }
    }
}

/// Copies an LZ4 match of `len` bytes from `op - offset` to `op` (source and destination may
/// overlap: the pattern of `offset` bytes repeats).
///
/// # Safety
/// `1 <= offset <= op`, `op + len <= olen`, `d` valid for `olen` bytes.
#[inline(always)]
unsafe fn copy_match(d: *mut u8, op: usize, offset: usize, len: usize, olen: usize) {
    unsafe {
        let m = op - offset;
        // Long runs of one byte value (the zero planes of sparse frames, referenced 1 to 32
        // bytes back) are most of the output: write them with memset.
        if len >= 64 && offset <= 32 {
            let b0 = *d.add(m);
            let mut uniform = true;
            for k in 1..offset {
                uniform &= *d.add(m + k) == b0;
            }
            if uniform {
                ptr::write_bytes(d.add(op), b0, len);
                return;
            }
        }
        if op + len + 16 <= olen {
            // Room for whole-chunk copies: the last chunk may write up to 15 bytes past the
            // match, inside `dst`, which later sequences overwrite.
            if len >= 64 && offset >= len {
                // Long non-overlapping copies (a zero plane copied from the previous one): the
                // C library's memcpy is fastest.
                ptr::copy_nonoverlapping(d.add(m), d.add(op), len);
            } else if offset >= 32 && op + len + 32 <= olen {
                // 32-byte chunks never read bytes not yet written, as offset >= 32.
                let mut k = 0;
                while k < len {
                    let v = ptr::read_unaligned(d.add(m + k) as *const [u8; 32]);
                    ptr::write_unaligned(d.add(op + k) as *mut [u8; 32], v);
                    k += 32;
                }
            } else if offset >= 16 {
                // A 16-byte chunk never reads bytes not yet written, as offset >= 16.
                let mut k = 0;
                while k < len {
                    let v = ptr::read_unaligned(d.add(m + k) as *const [u8; 16]);
                    ptr::write_unaligned(d.add(op + k) as *mut [u8; 16], v);
                    k += 16;
                }
            } else if offset >= 8 {
                let mut k = 0;
                while k < len {
                    let v = ptr::read_unaligned(d.add(m + k) as *const u64);
                    ptr::write_unaligned(d.add(op + k) as *mut u64, v);
                    k += 8;
                }
            } else if offset == 1 && len > 32 {
                ptr::write_bytes(d.add(op), *d.add(m), len);
            } else {
                // The repeating pattern of `offset` < 8 bytes spread over 8 bytes, written
                // every `step` bytes (a multiple of the offset) so it stays in phase.
                let idx = &PATTERN[offset];
                let mut p = [0u8; 8];
                for (b, &i) in p.iter_mut().zip(idx) {
                    *b = *d.add(m + i as usize);
                }
                let step = 8 - 8 % offset;
                let mut k = 0;
                while k < len {
                    ptr::write_unaligned(d.add(op + k) as *mut [u8; 8], p);
                    k += step;
                }
            }
        } else if offset >= len {
            ptr::copy_nonoverlapping(d.add(m), d.add(op), len);
        } else {
            double_copy(d, m, op, len);
        }
    }
}

/// `PATTERN[offset][i] = i % offset`: which byte of a short repeating match lands at `i`.
const PATTERN: [[u8; 8]; 8] = {
    let mut t = [[0u8; 8]; 8];
    let mut o = 1;
    while o < 8 {
        let mut i = 0;
        while i < 8 {
            t[o][i] = (i % o) as u8;
            i += 1;
        }
        o += 1;
    }
    t
};

/// Overlapping match copy by doubling: after each copy the repeated pattern in front of the
/// write position is twice as long, so `len` bytes take log2(len / offset) copies.
///
/// # Safety
/// `m < op`, `op + len` within `d`'s allocation.
#[inline(always)]
unsafe fn double_copy(d: *mut u8, m: usize, op: usize, len: usize) {
    let mut done = 0;
    while done < len {
        let chunk = (op + done - m).min(len - done);
        // SAFETY: [m, m + chunk) ends at or before op + done: the ranges do not overlap.
        unsafe { ptr::copy_nonoverlapping(d.add(m), d.add(op + done), chunk) };
        done += chunk;
    }
}

/// Minimum match length of the format, bytes.
const MIN_MATCH: usize = 4;
/// A match may not start in the last 12 bytes of a block (LZ4 block format spec).
const MF_LIMIT: usize = 12;
/// The last 5 bytes of a block are always literals (LZ4 block format spec).
const LAST_LITERALS: usize = 5;
/// Hash table size of the encoder, log2 entries.
const HASH_LOG: u32 = 12;

/// Appends the LZ4 block encoding of `src` to `out` (greedy, one hash probe per position).
pub fn compress(src: &[u8], out: &mut Vec<u8>) {
    let n = src.len();
    out.reserve(n + n / 255 + 16);
    let mut anchor = 0usize;
    if n > MF_LIMIT {
        let mut table = [u32::MAX; 1 << HASH_LOG];
        let read32 = |p: usize| u32::from_le_bytes([src[p], src[p + 1], src[p + 2], src[p + 3]]);
        let hash = |v: u32| (v.wrapping_mul(2_654_435_761) >> (32 - HASH_LOG)) as usize;
        let match_limit = n - LAST_LITERALS;
        let mut ip = 0usize;
        // After 64 misses in a row the scan steps 2 bytes, after 128 three, …: incompressible
        // stretches (the noisy low bit planes) are crossed quickly (as the reference does).
        let mut misses = 1usize << 6;
        while ip + MF_LIMIT <= n {
            let seq = read32(ip);
            let h = hash(seq);
            let cand = table[h] as usize;
            table[h] = ip as u32;
            if table_hit(cand, ip) && read32(cand) == seq {
                let len =
                    MIN_MATCH + common_len(src, cand + MIN_MATCH, ip + MIN_MATCH, match_limit);
                emit(out, &src[anchor..ip], Some((ip - cand, len)));
                // Index one position inside the match so runs keep finding themselves.
                if ip + len + MF_LIMIT <= n && len > 2 {
                    let p = ip + len - 2;
                    table[hash(read32(p))] = p as u32;
                }
                ip += len;
                anchor = ip;
                misses = 1 << 6;
            } else {
                ip += misses >> 6;
                misses += 1;
            }
        }
    }
    emit(out, &src[anchor..], None);
}

/// Length of the common run of `src[a..]` and `src[b..]` (a < b), stopping at `limit`;
/// compares 8 bytes at a time.
#[inline(always)]
fn common_len(src: &[u8], a: usize, b: usize, limit: usize) -> usize {
    let mut k = 0;
    while b + k + 8 <= limit {
        let x = u64::from_le_bytes(src[a + k..a + k + 8].try_into().unwrap_or_default());
        let y = u64::from_le_bytes(src[b + k..b + k + 8].try_into().unwrap_or_default());
        let d = x ^ y;
        if d != 0 {
            return k + (d.trailing_zeros() / 8) as usize;
        }
        k += 8;
    }
    while b + k < limit && src[a + k] == src[b + k] {
        k += 1;
    }
    k
}

/// Whether a hash-table entry is a usable match candidate for position `ip`.
#[inline(always)]
fn table_hit(cand: usize, ip: usize) -> bool {
    cand != u32::MAX as usize && cand < ip && ip - cand <= 65_535
}

/// Writes one sequence: token, literal length, literals and, unless it is the last sequence,
/// the match (offset, length).
fn emit(out: &mut Vec<u8>, lits: &[u8], m: Option<(usize, usize)>) {
    let lit = lits.len();
    let ml = m.map_or(0, |(_, len)| len - MIN_MATCH);
    out.push(((lit.min(15) as u8) << 4) | (ml.min(15) as u8));
    if lit >= 15 {
        push_len(out, lit - 15);
    }
    out.extend_from_slice(lits);
    if let Some((offset, _)) = m {
        out.extend_from_slice(&(offset as u16).to_le_bytes());
        if ml >= 15 {
            push_len(out, ml - 15);
        }
    }
}

/// Writes a length extension: 255s, then the remainder.
fn push_len(out: &mut Vec<u8>, mut n: usize) {
    while n >= 255 {
        out.push(255);
        n -= 255;
    }
    out.push(n as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(data: &[u8]) {
        let mut c = Vec::new();
        compress(data, &mut c);
        let mut d = vec![0xAA; data.len()];
        decompress(&c, &mut d).unwrap();
        assert_eq!(d, data);
    }

    #[test]
    fn roundtrips_runs_patterns_and_noise() {
        roundtrip(&[]);
        roundtrip(&[7]);
        roundtrip(&[0; 12]);
        roundtrip(&[0; 13]);
        roundtrip(&[0; 10_000]);
        let pattern: Vec<u8> = (0..5000).map(|i| (i % 7) as u8).collect();
        roundtrip(&pattern);
        let mut x = 12345u32;
        let noise: Vec<u8> = (0..3000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect();
        roundtrip(&noise);
        let mixed: Vec<u8> = noise
            .iter()
            .chain(&pattern)
            .chain(&noise[..100])
            .copied()
            .collect();
        roundtrip(&mixed);
    }

    /// Random valid LZ4 blocks (every copy path: offsets 1 to 65535, overlapping and not,
    /// short and long, near the end of the output) decoded by us and by a byte-by-byte
    /// reference written from the format description.
    #[test]
    fn random_blocks_match_a_naive_decoder() {
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut rnd = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n.max(1) as u64) as usize
        };
        for case in 0..400 {
            let mut block = Vec::new();
            let mut want: Vec<u8> = Vec::new();
            let sequences = 1 + rnd(40);
            for s in 0..=sequences {
                let lit = match rnd(4) {
                    0 => 0,
                    1 => rnd(4),
                    2 => rnd(20),
                    _ => rnd(300),
                };
                let lits: Vec<u8> = (0..lit)
                    .map(|_| if rnd(3) == 0 { 0 } else { rnd(256) as u8 })
                    .collect();
                want.extend_from_slice(&lits);
                let last = s == sequences || want.is_empty();
                let (offset, mlen) = if last {
                    (0, 4)
                } else {
                    let max = want.len().min(65_535);
                    let offset = match rnd(5) {
                        0 => 1 + rnd(8.min(max)),
                        1 => 1 + rnd(40.min(max)),
                        _ => 1 + rnd(max),
                    };
                    let mlen = 4 + match rnd(3) {
                        0 => rnd(8),
                        1 => rnd(80),
                        _ => rnd(3000),
                    };
                    (offset, mlen)
                };
                let ml = mlen - 4;
                block.push(((lit.min(15) as u8) << 4) | if last { 0 } else { ml.min(15) as u8 });
                if lit >= 15 {
                    push_len(&mut block, lit - 15);
                }
                block.extend_from_slice(&lits);
                if last {
                    break;
                }
                block.extend_from_slice(&(offset as u16).to_le_bytes());
                if ml >= 15 {
                    push_len(&mut block, ml - 15);
                }
                for _ in 0..mlen {
                    let b = want[want.len() - offset];
                    want.push(b);
                }
            }
            let mut got = vec![0x5Au8; want.len()];
            decompress(&block, &mut got).unwrap_or_else(|e| panic!("case {case}: {e}"));
            assert!(got == want, "case {case}");
        }
    }

    #[test]
    fn compressed_runs_are_small() {
        let mut c = Vec::new();
        compress(&[0; 8192], &mut c);
        assert!(c.len() < 64, "{}", c.len());
    }

    #[test]
    fn offsets_before_start_and_overruns_are_errors() {
        // token: 1 literal, match len 4; offset 2 > 1 byte produced
        let bad = [0x10, 0xAB, 0x02, 0x00];
        let mut out = [0u8; 5];
        assert!(matches!(
            decompress(&bad, &mut out),
            Err(Lz4Error::Offset {
                offset: 2,
                produced: 1,
                ..
            })
        ));
        let lits = [0x30, 1, 2, 3];
        let mut small = [0u8; 2];
        assert!(matches!(
            decompress(&lits, &mut small),
            Err(Lz4Error::Overrun { len: 3, .. })
        ));
        let mut big = [0u8; 4];
        assert_eq!(
            decompress(&lits, &mut big),
            Err(Lz4Error::Underrun {
                produced: 3,
                expected: 4
            })
        );
        assert!(matches!(
            decompress(&[], &mut big),
            Err(Lz4Error::Truncated { at: 0, .. })
        ));
    }
}
