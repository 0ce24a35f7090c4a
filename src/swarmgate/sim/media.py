"""What the simulator's image and audio models produce: valid files, made deterministically.

A PNG of one colour drawn from the prompt, a WAV (or raw PCM) tone whose length follows the
text spoken, and a transcript drawn from the uploaded bytes' hash. They are real files (a
decoder opens them), small and cheap to make, so a client's whole path can be tested.
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib

from swarmgate.sim import text

SAMPLE_RATE = 24_000  # OpenAI's pcm: 24 kHz, 16-bit signed little-endian, mono
TONE_HZ = 400  # a whole number of samples per period (60): one period, repeated exactly
WAV_HEADER_BYTES = 44
MAX_SIDE = 1024


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png(prompt: str, width: int, height: int) -> bytes:
    """An RGB PNG of ``width`` x ``height``, in one colour drawn from ``prompt``."""
    colour = _digest(prompt.encode())[:3]
    row = b"\x00" + colour * width  # filter type 0, then the pixels
    pixels = zlib.compress(row * height, 6)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", pixels)
        + _chunk(b"IEND", b"")
    )


def size_of(value: str | None) -> tuple[int, int] | None:
    """``"256x256"`` -> (256, 256); ``None`` / ``"auto"`` -> the simulator's default;
    anything else (or a side above ``MAX_SIDE``) -> None, which is the caller's 400."""
    if value is None or value == "auto":
        return 256, 256
    width, sep, height = value.partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        return None
    w, h = int(width), int(height)
    if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
        return None
    return w, h


def speech_seconds(spoken: str) -> float:
    """How long the simulated voice takes to say ``spoken``: 60 ms a character, 0.2 to 10 s."""
    return min(10.0, max(0.2, 0.06 * len(spoken)))


def pcm(seconds: float) -> bytes:
    """A 400 Hz tone at half volume, as OpenAI's raw pcm format."""
    period = SAMPLE_RATE // TONE_HZ
    one = struct.pack(
        f"<{period}h",
        *(round(16_000 * math.sin(2 * math.pi * i / period)) for i in range(period)),
    )
    samples = round(seconds * SAMPLE_RATE)
    return (one * (samples // period + 1))[: samples * 2]


def wav_header(data_bytes: int) -> bytes:
    """A RIFF/WAVE header for ``data_bytes`` of the pcm above."""
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, SAMPLE_RATE, SAMPLE_RATE * 2, 2, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def transcript(audio: bytes) -> str:
    """The same words for the same bytes: a few words more for every kilobyte uploaded."""
    seed = int.from_bytes(_digest(audio)[:8], "big")
    return "".join(text.generate(seed, 3 + min(len(audio) // 1024, 60))) + "."


def audio_seconds(audio: bytes) -> float:
    """The duration an upload is taken to last: as if it were the pcm above."""
    return round(len(audio) / (SAMPLE_RATE * 2), 3)
