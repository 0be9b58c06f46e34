"""zstd for codec payloads: per-thread cached contexts, and a decompressor that refuses first.

The decompressor is the part that faces untrusted bytes. It reads the frame header before
it decompresses anything and refuses a frame whose declared size differs from the size the
caller expects (computed by the caller from an already validated shape), so a 1 KB frame that
claims 10 GB costs a header parse, not an allocation. Every zstd error becomes a CodecError.
"""

from __future__ import annotations

import threading

import zstandard

from splitinfer.core.errors import CodecError

__all__ = ["DEFAULT_LEVEL", "MIN_LEVEL", "MAX_LEVEL", "check_level", "compress", "decompress"]

#: Level 1: on int8 activation codes it is both the fastest and (measured on resnet18) the
#: smallest of levels 1..3; the codes are high-entropy bytes, so the gain is Huffman + zero runs.
DEFAULT_LEVEL = 1
MIN_LEVEL = -7  # negative ("fast") levels trade ratio for speed; zstd allows far lower
MAX_LEVEL = 22

#: A window larger than this is refused unless the frame's content is at least as large:
#: every zstd level up to 19 uses at most an 8 MiB window, and one never needs more than the
#: content itself.
_MIN_WINDOW_CAP = 1 << 23

_local = threading.local()


def check_level(level: object) -> int:
    """Return ``level`` as an int, or raise CodecError if it is not a zstd level we accept."""
    if isinstance(level, bool) or not isinstance(level, int) or not MIN_LEVEL <= level <= MAX_LEVEL:
        raise CodecError(f"zstd level {level!r} is not supported; "
                         f"use an integer in [{MIN_LEVEL}, {MAX_LEVEL}] (default {DEFAULT_LEVEL})")
    return level


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # Contexts are not thread-safe and cost ~1 MB each to build: one per thread and level.
    cache: dict[int, zstandard.ZstdCompressor] = _local.__dict__.setdefault("compressors", {})
    cctx = cache.get(level)
    if cctx is None:
        cctx = cache[level] = zstandard.ZstdCompressor(
            level=level, write_content_size=True, write_checksum=True)
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx = getattr(_local, "decompressor", None)
    if dctx is None:
        dctx = _local.decompressor = zstandard.ZstdDecompressor()
    return dctx


def compress(data: bytes | bytearray | memoryview, level: int = DEFAULT_LEVEL) -> bytes:
    """One zstd frame holding ``data``, with its content size and a checksum."""
    return _compressor(level).compress(data)


def decompress(frame: bytes, expected: int, what: str) -> bytes:
    """Decompress one zstd frame that must hold exactly ``expected`` bytes, refusing first.

    ``what`` names the tensor in error messages. Refused: a header that does not parse, a
    dictionary id, a declared size other than ``expected``, a window over
    ``max(expected, 8 MiB)``, more or less output than ``expected``, trailing data after the
    frame (a second frame included), and anything zstd itself finds corrupt (checksum too).
    """
    try:
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as e:
        raise CodecError(f"{what}: payload is not a zstd frame ({e}); "
                         f"expected one zstd frame of {expected} decoded bytes") from e
    if params.dict_id:
        raise CodecError(f"{what}: zstd frame needs dictionary {params.dict_id}; "
                         "expected a frame made without a dictionary")
    declared = params.content_size
    if declared != zstandard.CONTENTSIZE_UNKNOWN and declared != expected:
        raise CodecError(f"{what}: zstd frame declares {declared} decoded bytes; "
                         f"the shape and codec imply exactly {expected}")
    window_cap = max(expected, _MIN_WINDOW_CAP)
    if params.window_size > window_cap:
        raise CodecError(f"{what}: zstd frame asks for a {params.window_size}-byte window; "
                         f"the limit for {expected} decoded bytes is {window_cap}")
    try:
        # With an undeclared size, max_output_size bounds the output buffer: a frame that
        # would produce more fails inside zstd instead of growing a buffer.
        out = _decompressor().decompress(
            frame, max_output_size=max(expected, 1), allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise CodecError(f"{what}: zstd frame refused ({e}); "
                         f"expected one well-formed frame of {expected} decoded bytes") from e
    if len(out) != expected:
        raise CodecError(f"{what}: zstd frame holds {len(out)} decoded bytes; "
                         f"the shape and codec imply exactly {expected}")
    return out
