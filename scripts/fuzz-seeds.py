#!/usr/bin/env python3
"""Seed corpora for the fuzz targets (fuzz/fuzz_targets), one folder per target.

Seeds come from the real captures in ``../shared/data`` (read there, never copied into the
repository) and, for the inputs no capture holds (ZMTP framing, stream v2 CBOR, SCPI
replies, ``.npy`` headers), from small messages built here after the protocol documents
(protocols.md §1–§3; RFC 23 for ZMTP; RFC 8949/8746 for CBOR).

Usage: ``fuzz-seeds.py OUT_DIR SHARED_DATA_DIR``.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path


def cbor_head(major: int, n: int) -> bytes:
    """A CBOR item head of major type ``major`` and argument ``n`` (RFC 8949 §3)."""
    if n < 24:
        return bytes([major << 5 | n])
    for code, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if n < 1 << (8 * struct.calcsize(fmt)):
            return bytes([major << 5 | code]) + struct.pack(fmt, n)
    raise ValueError(n)


def cbor(v: object) -> bytes:
    """CBOR of ints, text, bytes, lists, dicts and ``("tag", n, value)`` tuples."""
    if isinstance(v, tuple) and v[0] == "tag":
        return cbor_head(6, v[1]) + cbor(v[2])
    if isinstance(v, bool):
        return b"\xf5" if v else b"\xf4"
    if isinstance(v, int):
        return cbor_head(0, v) if v >= 0 else cbor_head(1, -1 - v)
    if isinstance(v, float):
        return b"\xfb" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode()
        return cbor_head(3, len(b)) + b
    if isinstance(v, (bytes, bytearray)):
        return cbor_head(2, len(v)) + bytes(v)
    if isinstance(v, list):
        return cbor_head(4, len(v)) + b"".join(cbor(x) for x in v)
    if isinstance(v, dict):
        return cbor_head(5, len(v)) + b"".join(cbor(k) + cbor(x) for k, x in v.items())
    raise TypeError(type(v))


def zmtp_frame(body: bytes, more: bool = False, command: bool = False) -> bytes:
    """One ZMTP 3 frame (RFC 23): flags, 1- or 8-byte size, body."""
    flags = (1 if more else 0) | (4 if command else 0)
    if len(body) < 256:
        return bytes([flags, len(body)]) + body
    return bytes([flags | 2]) + struct.pack(">Q", len(body)) + body


def dump_parts(path: Path, limit: int) -> list[bytes]:
    """The first ``limit`` parts of a DECTRIS capture (8-byte LE length, then the part)."""
    parts, data, at = [], path.read_bytes(), 0
    while at + 8 <= len(data) and len(parts) < limit:
        (n,) = struct.unpack_from("<Q", data, at)
        parts.append(data[at + 8 : at + 8 + n])
        at += 8 + n
    return parts


def main() -> None:
    out, shared = Path(sys.argv[1]), Path(sys.argv[2])
    seeds: dict[str, list[bytes]] = {
        t: []
        for t in (
            "merlin_mpx",
            "merlin_hdr",
            "merlin_mq1",
            "dectris_json",
            "dectris_cbor",
            "bslz4",
            "lz4",
            "zmtp",
            "scpi_reply",
            "npy_header",
            "tpx3_stream",
        )
    }

    merlin = shared / "merlin" / "Merlin_Single_Quad"
    for hdr in sorted(merlin.glob("*.hdr")):
        text = hdr.read_bytes()
        seeds["merlin_hdr"].append(text)
        seeds["merlin_mpx"].append(
            b"MPX,%010d," % (len(text) + 4) + b"HDR," + text[:64]
        )
    for mib in sorted(merlin.glob("*_1_Frame_*.mib")):
        # The MQ1 header and the start of the pixels (the raw 1-bit frames whole).
        seeds["merlin_mq1"].append(mib.read_bytes()[: 40 * 1024])
    seeds["merlin_mpx"] += [
        b"MPX,0000000030,0,GET,DETECTORSTATUS,0,0",
        b"MPX,0000000036,0,SET,NUMFRAMESTOACQUIRE,0",
        b"MPX,0000000030,0,CMD,STARTACQUISITION,0",
    ]

    parts = dump_parts(
        shared / "dectris" / "stream-v1" / "synthetic_16x16_256_u16.dump", 12
    )
    for p in parts:
        if p[:1] == b"{":
            seeds["dectris_json"].append(p)
        else:
            seeds["bslz4"].append(b"\x01" + p)  # 2-byte elements
            # The first LZ4 block of the blob: 12-byte header, 4-byte BE length, block.
            (n,) = struct.unpack_from(">I", p, 12)
            seeds["lz4"].append(b"\x05" + p[16 : 16 + n])
    blob = next(p for p in parts if p[:1] != b"{")
    seeds["dectris_json"].append(
        b'{"htype":"dimage_d-1.0","shape":[256,256],"type":"uint16","encoding":"bs16-lz4<"}'
        + blob
    )

    def image(compression: str | None, data: bytes, tag: int = 69) -> bytes:
        content = (
            data if compression is None else ("tag", 56500, [compression, 2, data])
        )
        array = ("tag", 40, [[256, 256], ("tag", tag, content)])
        return cbor(
            {
                "type": "image",
                "series_id": 1,
                "image_id": 0,
                "data": {"threshold_1": array},
            }
        )

    seeds["dectris_cbor"] += [
        image("bslz4", blob),
        image(None, bytes(16 * 16 * 2)).replace(cbor([256, 256]), cbor([16, 16])),
        cbor(
            {
                "type": "start",
                "series_id": 1,
                "number_of_images": 256,
                "image_size_x": 256,
                "image_size_y": 256,
                "image_dtype": "uint16",
                "channels": ["threshold_1"],
                "count_time": 0.001,
                "frame_time": 0.001,
            }
        ),
        cbor({"type": "end", "series_id": 1}),
    ]

    greeting = (
        b"\xff" + bytes(8) + b"\x7f\x03\x01NULL" + bytes(16) + b"\x00" + bytes(31)
    )
    ready = b"\x05READY\x0bSocket-Type" + struct.pack(">I", 4) + b"PUSH"
    seeds["zmtp"] += [
        greeting
        + zmtp_frame(ready, command=True)
        + zmtp_frame(parts[0], more=True)
        + zmtp_frame(parts[1]),
        greeting + zmtp_frame(b"\x04PING\x00\x0aab", command=True) + zmtp_frame(blob),
        greeting + zmtp_frame(b"\x05ERROR\x04oops", command=True),
    ]

    seeds["scpi_reply"] += [
        b"OK",
        b"1",
        b"200.0",
        b"READY",
        b"64,64",
        b"0.5 nm",
        b"ERR -113",
    ]

    def npy(descr: str, shape: str, version: int = 1) -> bytes:
        text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
        pre = 10 if version == 1 else 12
        pad = -(pre + len(text) + 1) % 64
        text = (text + " " * pad + "\n").encode()
        size = struct.pack("<H" if version == 1 else "<I", len(text))
        return b"\x93NUMPY" + bytes([version, 0]) + size + text

    seeds["npy_header"] += [
        npy("<u2", "(16, 16, 256, 256)"),
        npy("|u1", "(4,)"),
        npy("<f4", "(2, 3)", 2),
        npy(">u4", "()"),
        npy("|b1", "(3, 3)", 3),
    ]

    tpx = (shared / "tpx3" / "synthetic_16x16_512.tpx").read_bytes()
    seeds["tpx3_stream"] += [tpx[:8192], tpx[:65536]]

    for target, items in seeds.items():
        folder = out / target
        folder.mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(items):
            (folder / f"seed-{i:02d}").write_bytes(s)
        print(f"{target}: {len(items)} seeds")


if __name__ == "__main__":
    main()
