"""Wire codec benchmark: every ndarray codec on sparse detector images, float16 scores and a dense array.

Images: a genuine 3x512x512 float32 wire event (entry 0 of ../shared/data/larcv1/ssnet_sample_512.root, when
that file and uproot are there), a synthetic one of ~3% nonzero pixels clustered in tracks, the float16 scores
of a net over the genuine (else the synthetic) event (zero below threshold, as the worker sends them), and a
dense random float32 array.  For each codec of :data:`ssnet_data.ndarray.COMPRESSIONS` it prints the encoded
bytes, the ratio, encode and decode MB/s (decoded array bytes per second, best of several repeats, through
``encode_array`` / ``decode_array``), and the milliseconds to move the array over a 1 GB/s link (encode +
transfer + decode).  Candidates that ssnet_data does not ship follow, marked ``*``, where their libraries are
installed (byte-shuffled LZ4, zstd, blosc2).  The last line names the fastest shipped codec that wins on sparse
images: the smallest encode + decode time, over the sparse images, among the codecs that send at most a quarter
of the raw bytes of each.

Usage: ``python bench/codecs.py [--repeats N]`` (under a minute).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ssnet_data.ndarray import COMPRESSIONS, DEFAULT_CODEC, decode_array, encode_array

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "larcv1" / "ssnet_sample_512.root"
WIN_RATIO = 4.0  # a codec "wins" on an image when it sends at most 1/WIN_RATIO of the raw bytes
LINK_BYTES_PER_S = 1e9
Array = np.ndarray[Any, Any]


def genuine_event() -> Optional[Array]:
    """Entry 0 of the shipped sample file, (3, 512, 512) float32; None where the file or uproot is missing."""
    try:
        from ssnet_data.larcv1 import LArCV1Reader

        entry = LArCV1Reader(SAMPLE, "wire")[0]
    except Exception:  # no shared/ data, no uproot: the synthetic event still runs
        return None
    return np.ascontiguousarray(np.stack([image.pixels for image in entry.images]), dtype=np.float32)


def track_event(rng: np.random.Generator, shape: tuple[int, int, int] = (3, 512, 512),
                occupancy: float = 0.03) -> Array:
    """A synthetic wire event: straight tracks ~3 pixels wide with gamma-distributed charge until ``occupancy``."""
    event = np.zeros(shape, dtype=np.float32)
    _, rows, cols = shape
    for plane in event:
        while np.count_nonzero(plane) < occupancy * rows * cols:
            start = rng.uniform((0, 0), (rows, cols))
            angle, length = rng.uniform(0, np.pi), rng.uniform(30, 300)
            steps = np.arange(0, length, 0.5)
            path = start + np.outer(steps, (np.sin(angle), np.cos(angle)))
            for offset in (-1, 0, 1):
                r = np.clip(np.round(path[:, 0] + offset).astype(int), 0, rows - 1)
                c = np.clip(np.round(path[:, 1]).astype(int), 0, cols - 1)
                plane[r, c] = np.asarray(rng.gamma(2.0, 20.0, r.size), dtype=np.float32) + 10.0
    return event


def scores_of(event: Array, rng: np.random.Generator) -> Array:
    """Float16 scores in [0, 1), zero where the wire image is below threshold (the worker's masked output)."""
    smooth = 0.5 + 0.45 * np.sin(np.arange(event.size, dtype=np.float32).reshape(event.shape) / 977.0)
    noisy = np.clip(smooth + np.asarray(rng.normal(0, 0.05, event.shape), dtype=np.float32), 0, 0.999)
    return np.where(event > 0, noisy, 0).astype(np.float16)


def best_time(action: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    spent = 0.0
    for i in range(repeats):
        began = time.perf_counter()
        action()
        elapsed = time.perf_counter() - began
        best, spent = min(best, elapsed), spent + elapsed
        if spent > 1.0 and i >= 2:  # slow codecs on dense data: three tries are enough
            break
    return best


# --------------------------------------------------------------------------- candidates ssnet_data does not ship
def _shuffle(array: Array) -> bytes:
    raw, width = np.ascontiguousarray(array).reshape(-1).view(np.uint8), array.itemsize
    return b"".join(raw[byte::width].tobytes() for byte in range(width))


def _unshuffle(data: bytes, like: Array, count: Optional[int] = None) -> Array:
    count = like.size if count is None else count
    planes, width = np.frombuffer(data, np.uint8), like.itemsize
    values = np.empty(count, like.dtype)
    for byte in range(width):
        values.view(np.uint8)[byte::width] = planes[byte * count:(byte + 1) * count]
    return values


def candidates() -> dict[str, tuple[Callable[[Array], bytes], Callable[[bytes, Array], object]]]:
    """Codecs measured for the choice but not shipped: (encode, decode) pairs, where the libraries are here."""
    found: dict[str, tuple[Callable[[Array], bytes], Callable[[bytes, Array], object]]] = {}
    try:
        import lz4.block  # type: ignore[import-untyped]

        found["shuffle+lz4*"] = (
            lambda a: lz4.block.compress(_shuffle(a), store_size=False),
            lambda d, a: _unshuffle(lz4.block.decompress(d, uncompressed_size=a.nbytes), a),
        )
    except Exception:  # missing, or built for another NumPy (blosc2 2.5 on NumPy 2)
        pass
    try:
        import zstandard

        compressor, decompressor = zstandard.ZstdCompressor(level=1), zstandard.ZstdDecompressor()
        found["zstd-1*"] = (
            lambda a: compressor.compress(a.data),
            lambda d, a: np.frombuffer(decompressor.decompress(d, max_output_size=a.nbytes), a.dtype),
        )
        found["shuffle+zstd-1*"] = (
            lambda a: compressor.compress(_shuffle(a)),
            lambda d, a: _unshuffle(decompressor.decompress(d, max_output_size=a.nbytes), a),
        )
        found["sparse+zstd-1*"] = (  # ssnet_data's sparse-lz4 layout, zstd instead of LZ4 (count first)
            lambda a: _sparse_transform(a, compressor.compress),
            lambda d, a: _sparse_untransform(d, a, decompressor.decompress),
        )
    except Exception:  # missing, or built for another NumPy (blosc2 2.5 on NumPy 2)
        pass
    try:
        import blosc2

        def blosc2_compress(codec: Any) -> Callable[[Array], bytes]:
            return lambda a: blosc2.compress(a, typesize=a.itemsize, codec=codec, clevel=1,
                                             filter=blosc2.Filter.SHUFFLE)

        for name, codec in (("lz4", blosc2.Codec.LZ4), ("zstd", blosc2.Codec.ZSTD)):
            found[f"blosc2-{name}-shuffle*"] = (blosc2_compress(codec), lambda d, a: blosc2.decompress(d))
    except Exception:  # missing, or built for another NumPy (blosc2 2.5 on NumPy 2)
        pass
    return found


def _sparse_transform(array: Array, compress: Callable[[bytes], bytes]) -> bytes:
    flat = array.reshape(-1)
    positions = np.flatnonzero(flat.view(f"u{flat.itemsize}") != 0)
    payload = _shuffle(np.diff(positions, prepend=0).astype("<u4")) + _shuffle(flat[positions])
    return positions.size.to_bytes(8, "little") + compress(payload)


def _sparse_untransform(data: bytes, like: Array, decompress: Callable[..., bytes]) -> Array:
    count = int.from_bytes(data[:8], "little")
    payload = decompress(data[8:], max_output_size=count * (4 + like.itemsize))
    indices = np.cumsum(_unshuffle(payload[:4 * count], np.zeros(0, "<u4"), count), dtype=np.uint32)
    if count and (indices[-1] >= like.size or not np.all(indices[1:] > indices[:-1])):
        raise ValueError("bad indices")
    flat = np.zeros(like.size, like.dtype)
    flat[indices] = _unshuffle(payload[4 * count:], like, count)
    return flat.reshape(like.shape)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------------- run
def measure(array: Array, encode: Callable[[Array], Any], decode: Callable[[Any, Array], object],
            repeats: int) -> tuple[int, float, float]:
    """(encoded bytes, encode seconds, decode seconds) of one codec on one array."""
    encoded = encode(array)
    size = sum(memoryview(frame).nbytes for frame in encoded) if isinstance(encoded, list) else len(encoded)
    return size, best_time(lambda: encode(array), repeats), best_time(lambda: decode(encoded, array), repeats)


def shipped(codec: Optional[str]) -> tuple[Callable[[Array], Any], Callable[[Any, Array], object]]:
    def decode(frames: list[Any], array: Array) -> object:
        decoded = decode_array(frames[0], frames[1])
        if decoded.shape != array.shape:
            raise AssertionError(f"{codec}: wrong shape")
        return decoded

    return (lambda a: encode_array(a, codec)), decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timings per codec and image (the best is kept)")
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    genuine = genuine_event()
    synthetic = track_event(rng)
    images: dict[str, tuple[Array, bool]] = {}
    if genuine is not None:
        images["genuine event f32"] = (genuine, True)
    images["track event f32"] = (synthetic, True)
    images["scores f16"] = (scores_of(genuine if genuine is not None else synthetic, rng), True)
    images["dense random f32"] = (rng.random((3, 512, 512), dtype=np.float32), False)

    for array, _ in images.values():  # every shipped codec gives the array back, bit for bit
        for codec in COMPRESSIONS:
            head, data = encode_array(array, codec)
            if decode_array(head, data).tobytes() != array.tobytes():
                raise AssertionError(f"{codec} does not round-trip")

    totals: dict[Optional[str], float] = dict.fromkeys(COMPRESSIONS, 0.0)
    wins: dict[Optional[str], bool] = dict.fromkeys(COMPRESSIONS, True)
    others = candidates()
    for title, (array, sparse) in images.items():
        nonzero = np.count_nonzero(array) / array.size
        print(f"\n{title}: shape {array.shape}, {array.nbytes} bytes, {nonzero:.1%} nonzero")
        print(f"  {'codec':<24} {'bytes':>9} {'ratio':>7} {'enc MB/s':>9} {'dec MB/s':>9} {'ms @1GB/s':>10}")
        rows: list[tuple[str, Optional[str], Callable[[Array], Any], Callable[[Any, Array], object]]] = [
            (codec or "raw", codec, *shipped(codec)) for codec in COMPRESSIONS
        ]
        rows += [(name, None, *pair) for name, pair in others.items()]
        for name, codec, encode, decode in rows:
            size, enc, dec = measure(array, encode, decode, args.repeats)
            move_ms = (enc + size / LINK_BYTES_PER_S + dec) * 1e3
            print(f"  {name:<24} {size:9d} {array.nbytes / size:7.1f} {array.nbytes / enc / 1e6:9.0f} "
                  f"{array.nbytes / dec / 1e6:9.0f} {move_ms:10.2f}")
            if sparse and not name.endswith("*"):
                totals[codec] += enc + dec
                wins[codec] = wins[codec] and array.nbytes / size >= WIN_RATIO
    print("\n  * not shipped, for comparison")

    winners = [codec for codec in COMPRESSIONS if wins[codec]]
    fastest = min(winners, key=lambda codec: totals[codec])
    summary = ", ".join(f"{c or 'raw'} {totals[c] * 1e3:.2f} ms" for c in sorted(winners, key=lambda c: totals[c]))
    print(f"encode + decode over the sparse images, codecs sending <= 1/{WIN_RATIO:g} of the bytes: {summary}")
    print(f"fastest codec that wins on sparse images: {fastest or 'raw'} (DEFAULT_CODEC is {DEFAULT_CODEC or 'raw'})")


if __name__ == "__main__":
    main()
