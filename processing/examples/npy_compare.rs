//! Our `.npy` code (`io::npy` + the ranged reads of `NpyDataSet`) against `npyz` and
//! `ndarray-npy`, on what stemflow needs. Decision 0017 rests on these figures.
//!
//! 1. **Headers.** Every `descr` we accept (`b1`, `u1`–`u8`, `i1`–`i8`, `f4`, `f8`) in every
//!    byte order NumPy writes (`<`, `>`, `|`), both `fortran_order` values, shapes of 0 to 4
//!    dimensions, format versions 1, 2 and 3, NumPy's key order and another one, and a few
//!    malformed headers: each file is parsed by all three, and their element type, byte
//!    order, shape, Fortran flag and data offset compared. Our written headers
//!    (`header_bytes`) are read back by both crates and compared byte for byte with theirs.
//!    Since the switch (0017), `npy::read_header` parses the dict with npyz, so this part
//!    checks our preamble handling and our mapping onto the element types we read.
//! 2. **Ranged reads into tiles.** An offline run reads a partition (about 4 MiB of frames)
//!    at a time into a tile allocated once. A 128 MiB `<u2` file of 256 × 256 frames, in the
//!    page cache, is read partition by partition, once per pass (open, header, every
//!    partition: what one run does):
//!    - ours: `NpyDataSet::open` + `read_tile` (one `pread` straight into the tile);
//!    - npyz: `NpyFile` over a `BufReader`, `seek_to` the partition's first element, then its
//!      element iterator into the tile (the crate's ranged read);
//!    - ndarray-npy: the file memory-mapped, `view_npy` (a zero-copy view, header checked),
//!      the partition's slice copied into the tile (the crate has no ranged read into a
//!      buffer; `read_npy` reads the whole array into memory).
//!
//!    Interleaved rounds (ours, npyz, ndarray-npy, ours, …), fastest pass within each
//!    window; ratios per round, because the machine is shared and absolute rates drift.
//!
//! Run: `cargo run --release -p stemflow-processing --example npy_compare [-- ROUNDS
//! WINDOW_MS]` (defaults 5 rounds, 300 ms).

use ndarray::ArrayView4;
use ndarray_npy::ViewNpyExt;
use ndarray_npy::npy::header::{Header as NdHeader, Layout};
use npyz::WriterBuilder;
use std::fs::File;
use std::io::{BufReader, Cursor, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use stemflow_core::frame::{Tile, TileData};
use stemflow_core::{DType, SigShape};
use stemflow_processing::io::npy::{self, NpyKind};
use stemflow_processing::io::{ByteOrder, DataSet, NpyDataSet};

/// What a header says, in one form for all three parsers: (type char, item size, byte
/// order `<`/`>`/`|`, shape, Fortran order, data offset).
type Parsed = (char, usize, char, Vec<usize>, bool, u64);

/// The element types stemflow reads (`NpyKind`): others are refused after parsing.
fn accepted(p: Parsed) -> Result<Parsed, String> {
    match (p.0, p.1) {
        ('b', 1) | ('u' | 'i', 1 | 2 | 4 | 8) | ('f', 4 | 8) => Ok(p),
        (c, n) => Err(format!("dtype {c}{n} not supported")),
    }
}

fn ours(path: &Path) -> Result<Parsed, String> {
    let h = npy::read_header(path).map_err(|e| e.to_string())?;
    let (c, n) = match h.kind {
        NpyKind::Bool => ('b', 1),
        NpyKind::Unsigned(n) => ('u', n),
        NpyKind::Signed(n) => ('i', n),
        NpyKind::Float(n) => ('f', n),
    };
    let order = match (h.byte_order, n) {
        (_, 1) => '|',
        (ByteOrder::Little, _) => '<',
        (ByteOrder::Big, _) => '>',
    };
    Ok((c, n, order, h.shape, h.fortran_order, h.data_offset))
}

fn npyz_parse(path: &Path) -> Result<Parsed, String> {
    let mut r = BufReader::new(File::open(path).map_err(|e| e.to_string())?);
    let h = npyz::NpyHeader::from_reader(&mut r).map_err(|e| e.to_string())?;
    let offset = r.stream_position().map_err(|e| e.to_string())?;
    let npyz::DType::Plain(t) = h.dtype() else {
        return Err(format!("not a plain dtype: {:?}", h.dtype()));
    };
    let c = t.type_char().to_str().chars().next().unwrap_or('?');
    let n = t.num_bytes().unwrap_or(0);
    let order = match (t.endianness(), n) {
        (_, 1) | (npyz::Endianness::Irrelevant, _) => '|',
        (npyz::Endianness::Little, _) => '<',
        (npyz::Endianness::Big, _) => '>',
    };
    let fortran = matches!(h.order(), npyz::Order::Fortran);
    let shape = h.shape().iter().map(|&d| d as usize).collect();
    Ok((c, n, order, shape, fortran, offset))
}

fn ndnpy_parse(path: &Path) -> Result<Parsed, String> {
    let mut r = BufReader::new(File::open(path).map_err(|e| e.to_string())?);
    let h = NdHeader::from_reader(&mut r).map_err(|e| e.to_string())?;
    let offset = r.stream_position().map_err(|e| e.to_string())?;
    // The type descriptor is a Python value; for plain types a string literal like '<u2'.
    let text = h.type_descriptor.to_string();
    let Some(descr) = text
        .strip_prefix('\'')
        .and_then(|t| t.strip_suffix('\''))
        .or_else(|| text.strip_prefix('"').and_then(|t| t.strip_suffix('"')))
        .map(str::to_string)
    else {
        return Err(format!("not a plain dtype: {text}"));
    };
    let (order, code) = match descr.chars().next() {
        Some(o @ ('<' | '>' | '|' | '=')) => (o, &descr[1..]),
        _ => ('=', &descr[..]),
    };
    let c = code.chars().next().unwrap_or('?');
    let n: usize = code[1..].parse().map_err(|_| format!("descr {descr}"))?;
    let order = if n == 1 { '|' } else { order };
    Ok((c, n, order, h.shape, h.layout == Layout::Fortran, offset))
}

/// A `.npy` file's header bytes for version `v`, with `dict` as the header text.
fn header_file(dict: &str, v: u8) -> Vec<u8> {
    let pre = if v == 1 { 10 } else { 12 };
    let mut text = dict.to_string();
    let total = pre + text.len() + 1;
    text.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    text.push('\n');
    let mut out = vec![0x93, b'N', b'U', b'M', b'P', b'Y', v, 0];
    if v == 1 {
        out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(text.as_bytes());
    out
}

fn shape_text(shape: &[usize]) -> String {
    match shape {
        [] => "()".into(),
        [d] => format!("({d},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn headers(dir: &Path) {
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    let mut descrs = vec!["|b1".to_string(), "|u1".into(), "|i1".into()];
    for o in ['<', '>'] {
        for t in ["u2", "u4", "u8", "i2", "i4", "i8", "f4", "f8"] {
            descrs.push(format!("{o}{t}"));
        }
    }
    let shapes: [&[usize]; 5] = [&[], &[7], &[3, 4], &[2, 3, 256], &[16, 16, 256, 256]];
    for d in &descrs {
        for fortran in ["False", "True"] {
            for s in shapes {
                for v in [1u8, 2, 3] {
                    let st = shape_text(s);
                    let dict =
                        format!("{{'descr': '{d}', 'fortran_order': {fortran}, 'shape': {st}, }}");
                    cases.push((format!("v{v} {dict}"), header_file(&dict, v)));
                }
                let st = shape_text(s);
                let dict = format!("{{'shape': {st}, 'fortran_order': {fortran}, 'descr': '{d}'}}");
                cases.push((format!("v1 {dict}"), header_file(&dict, 1)));
            }
        }
    }
    let malformed = [
        "{'descr': '<c16', 'fortran_order': False, 'shape': (2,), }",
        "{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }",
        "{'descr': [('a', '<u2'), ('b', '<f4')], 'fortran_order': False, 'shape': (2,), }",
        "{'descr': '<u2', 'shape': (2,), }",
        "{'descr': '<u2', 'fortran_order': False, }",
        "{'descr': '<u2', 'fortran_order': False, 'shape': (2, -3), }",
        "{'descr': '<u2', 'fortran_order': 0, 'shape': (2,), }",
        "{'descr': '<u2', 'fortran_order': False, 'shape': (2,), 'extra': 1, }",
        "{'descr': '<u2', 'fortran_order': False, 'shape': [2, 3], }",
        "{'descr': '<u2' 'fortran_order': False 'shape': (2,)}",
    ];
    for m in malformed {
        cases.push((format!("malformed {m}"), header_file(m, 1)));
    }
    let mut agree = 0;
    let mut differ = Vec::new();
    for (k, (name, bytes)) in cases.iter().enumerate() {
        let p = dir.join(format!("h{k}.npy"));
        std::fs::write(&p, bytes).expect("write header");
        // The crates parse any dtype; what we accept is decided after parsing, as ours does.
        let a = ours(&p);
        let b = npyz_parse(&p).and_then(accepted);
        let c = ndnpy_parse(&p).and_then(accepted);
        let same = |x: &Result<Parsed, String>, y: &Result<Parsed, String>| match (x, y) {
            (Ok(x), Ok(y)) => x == y,
            (Err(_), Err(_)) => true,
            _ => false,
        };
        if same(&a, &b) && same(&a, &c) {
            agree += 1;
        } else {
            let show = |r: &Result<Parsed, String>| match r {
                Ok(p) => format!("{p:?}"),
                Err(e) => format!("error: {}", e.lines().next().unwrap_or("")),
            };
            differ.push(format!(
                "  {name}\n    ours        {}\n    npyz        {}\n    ndarray-npy {}",
                show(&a),
                show(&b),
                show(&c)
            ));
        }
    }
    println!(
        "headers: {} cases, {agree} parsed alike by all three, {} differ:",
        cases.len(),
        differ.len()
    );
    for d in &differ {
        println!("{d}");
    }
    // Our written headers, read back and compared with the crates' own.
    let mut written_same = 0;
    let mut written = 0;
    for d in ["|u1", "<u2", "<u4", "<u8", "<f4", "<f8"] {
        for s in [&[5usize][..], &[16, 16, 256, 256], &[1 << 20, 3]] {
            let mine = npy::header_bytes(d, s);
            let p = dir.join("w.npy");
            std::fs::write(&p, &mine).expect("write");
            let a = ours(&p).expect("ours reads ours");
            assert_eq!(npyz_parse(&p).as_ref(), Ok(&a), "npyz reads our {d} {s:?}");
            assert_eq!(
                ndnpy_parse(&p).as_ref(),
                Ok(&a),
                "ndarray-npy reads our {d} {s:?}"
            );
            let shape64: Vec<u64> = s.iter().map(|&x| x as u64).collect();
            let dtype = npyz::DType::Plain(d.parse().expect("type string"));
            let theirs = npyz::WriteOptions::new_header_only()
                .dtype(dtype)
                .shape(&shape64)
                .writer(Cursor::new(Vec::new()))
                .write_header_only()
                .expect("npyz header")
                .into_inner();
            let nd = NdHeader {
                type_descriptor: format!("'{d}'").parse().expect("descr literal"),
                layout: Layout::Standard,
                shape: s.to_vec(),
            }
            .to_bytes()
            .expect("ndarray-npy header");
            written += 1;
            written_same += usize::from(mine == theirs && mine == nd);
            if written == 1 {
                for (who, h) in [("ours", &mine), ("npyz", &theirs), ("ndarray-npy", &nd)] {
                    println!("  {who:<12} {:?}", String::from_utf8_lossy(h).trim_end());
                }
            }
        }
    }
    println!(
        "written headers: {written} of ours read back alike by both crates; {written_same} \
         byte-identical to both crates' own"
    );
    // The header NumPy itself wrote for the shared DECTRIS capture's expected frames.
    let numpy = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/dectris/stream-v1/synthetic_16x16_256_u16.npy"
    ));
    if let Ok(bytes) = std::fs::read(numpy) {
        let mine = npy::header_bytes("<u2", &[16, 16, 256, 256]);
        println!(
            "NumPy's header of {} (16, 16, 256, 256) <u2: ours {}",
            numpy.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
            if bytes.starts_with(&mine) {
                "byte-identical"
            } else {
                "differs"
            }
        );
    }
}

fn u16s(t: &mut Tile) -> &mut [u16] {
    match &mut t.data {
        TileData::U16(v) => v,
        _ => unreachable!("u16 tile"),
    }
}

/// The tile holds the partition starting at frame `first` (pixel 0 of frame k is k mod 256,
/// pixel i of every frame otherwise 7 i).
fn check(t: &mut Tile, first: usize) {
    let v = u16s(t);
    assert_eq!(v[0], (first & 0xFF) as u16);
    assert_eq!(v[1], 7);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let window = Duration::from_millis(args.next().and_then(|s| s.parse().ok()).unwrap_or(300));
    let dir: PathBuf = std::env::temp_dir().join(format!("npy-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    headers(&dir);

    // 1024 frames of 256 × 256 u16 (128 MiB), values i * 7 + k.
    let (frames, sig) = (1024usize, SigShape::new(256, 256));
    let path = dir.join("frames.npy");
    {
        let mut f = std::io::BufWriter::new(File::create(&path).expect("create"));
        f.write_all(&npy::header_bytes("<u2", &[frames, sig.rows, sig.cols]))
            .expect("header");
        let frame: Vec<u8> = (0..sig.len())
            .flat_map(|i| ((i * 7) as u16).to_le_bytes())
            .collect();
        for k in 0..frames {
            let mut fr = frame.clone();
            fr[0] = k as u8;
            f.write_all(&fr).expect("frame");
        }
    }
    let part = stemflow_processing::engine::partition_frames(sig, DType::U16, 2, frames);
    let bytes = frames * sig.len() * 2;
    println!(
        "ranged reads: {frames} frames of 256 x 256 u16 ({} MiB, page cache), {part}-frame \
         partitions ({} KiB)",
        bytes >> 20,
        (part * sig.len() * 2) >> 10
    );
    let mut tile = Tile::zeros(0, part, sig, DType::U16);
    let mut pass_ours = |tile: &mut Tile| {
        let mut ds = NpyDataSet::open(&path).expect("open");
        for first in (0..frames).step_by(part) {
            ds.read_tile(first as u64, part, tile).expect("read");
            check(tile, first);
        }
    };
    let mut pass_npyz = |tile: &mut Tile| {
        let f = npyz::NpyFile::new(BufReader::with_capacity(
            1 << 20,
            File::open(&path).unwrap(),
        ))
        .expect("npyz open");
        let mut r = f.data::<u16>().expect("u16 data");
        for first in (0..frames).step_by(part) {
            r.seek_to((first * sig.len()) as u64).expect("seek");
            for (dst, v) in u16s(tile).iter_mut().zip(&mut r) {
                *dst = v.expect("element");
            }
            check(tile, first);
        }
    };
    let mut pass_nd = |tile: &mut Tile| {
        let f = File::open(&path).expect("open");
        // SAFETY: the file is ours and nothing writes it while it is mapped.
        let map = unsafe { memmap2::Mmap::map(&f) }.expect("mmap");
        let view = ArrayView4::<u16>::view_npy(&map)
            .or_else(|_| {
                ndarray::ArrayView3::<u16>::view_npy(&map).map(|v| v.insert_axis(ndarray::Axis(0)))
            })
            .expect("view");
        let all = view.to_slice().expect("C order");
        let n = part * sig.len();
        for first in (0..frames).step_by(part) {
            let s = first * sig.len();
            u16s(tile).copy_from_slice(&all[s..s + n]);
            check(tile, first);
        }
    };
    let rate = |f: &mut dyn FnMut(&mut Tile), tile: &mut Tile| {
        f(tile);
        let t0 = Instant::now();
        let mut best = f64::INFINITY;
        let mut passes = 0;
        while passes < 2 || t0.elapsed() < window {
            let t = Instant::now();
            f(tile);
            best = best.min(t.elapsed().as_secs_f64());
            passes += 1;
        }
        bytes as f64 / best / 1e9
    };
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    let (mut rb, mut rc) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let x = rate(&mut pass_ours, &mut tile);
        let y = rate(&mut pass_npyz, &mut tile);
        let z = rate(&mut pass_nd, &mut tile);
        println!(
            "  round: ours {x:6.2} GB/s  npyz {y:6.2}  ndarray-npy (mmap) {z:6.2}  \
             ours/npyz {:5.1}  ours/ndarray-npy {:5.2}",
            x / y,
            x / z
        );
        a.push(x);
        b.push(y);
        c.push(z);
        rb.push(x / y);
        rc.push(x / z);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ma, mb, mc) = (med(&mut a), med(&mut b), med(&mut c));
    let (mrb, mrc) = (med(&mut rb), med(&mut rc));
    println!(
        "medians: ours {ma:.2} GB/s, npyz {mb:.2} GB/s, ndarray-npy (mmap + copy) {mc:.2} GB/s; \
         ours/npyz {mrb:.1} ({:.1}–{:.1}), ours/ndarray-npy {mrc:.2} ({:.2}–{:.2})",
        rb[0],
        rb[rb.len() - 1],
        rc[0],
        rc[rc.len() - 1]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
