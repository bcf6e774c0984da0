"""Zero the GPU code of every architecture but one inside a CUDA shared library, in place.

onnxruntime-gpu's CUDA provider (libonnxruntime_providers_cuda.so, 284 MB) carries compiled
kernels for sm_75, 80, 86, 89, 90 and 120; the lent H100/H200 run sm_90 alone. A call to the
lent machine carries at most 64 MiB, so the wheel (256 MB) travels in parts: zeroing the
other architectures' kernels (142 of 219 MB of kernels) lets the library compress to about a
quarter of its size. The fatbin headers stay, so the CUDA runtime still finds the sm_90
entries; a card of another architecture would find zeros and must use the unmodified wheel.

    python3 deploy/gpu/fatbin_keep_arch.py LIBRARY [ARCH]   (ARCH default 90)

Format (as read from the file; NVIDIA does not document it): a fatbin is a 16-byte header
(magic 0xBA55ED50, version u16, header size u16, size u64) followed by entries, each with a
header (kind u16, version u16, header size u32, payload size u64, ..., architecture u32 at
byte 28) and its payload.
"""

from __future__ import annotations

import struct
import sys
from collections import Counter
from pathlib import Path

MAGIC = struct.pack("<I", 0xBA55ED50)


def keep_arch(data: bytearray, arch: int) -> tuple[Counter, int, int]:
    """Zero, in ``data``, every fatbin entry payload whose architecture is not ``arch``.

    Returns (bytes per architecture, bytes zeroed, bytes kept)."""
    per_arch: Counter = Counter()
    zeroed = kept = 0
    position = 0
    while (start := data.find(MAGIC, position)) >= 0:
        _version, header, size = struct.unpack_from("<HHQ", data, start + 4)
        if header != 16:  # the magic bytes by chance, not a fatbin
            position = start + 4
            continue
        entry, end = start + header, start + header + size
        while entry < end:
            _kind, _ver, entry_header, payload = struct.unpack_from("<HHIQ", data, entry)
            entry_arch = struct.unpack_from("<I", data, entry + 28)[0]
            per_arch[entry_arch] += payload
            body = entry + entry_header
            if entry_arch != arch:
                data[body : body + payload] = bytes(payload)
                zeroed += payload
            else:
                kept += payload
            entry = body + payload
        position = end
    return per_arch, zeroed, kept


def main(path: str, arch: int = 90) -> None:
    data = bytearray(Path(path).read_bytes())
    per_arch, zeroed, kept = keep_arch(data, arch)
    if not kept:
        raise SystemExit(f"no sm_{arch} kernels in {path}: left unchanged")
    Path(path).write_bytes(data)
    print({f"sm_{a}": f"{b / 1e6:.1f} MB" for a, b in sorted(per_arch.items())},
          f"zeroed {zeroed / 1e6:.1f} MB, kept {kept / 1e6:.1f} MB")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 90)
