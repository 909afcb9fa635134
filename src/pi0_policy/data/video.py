"""
Encode and decode the camera videos of a dataset (mp4, through PyAV's FFmpeg).

Frames are encoded as they arrive (``VideoEncoder.add``), so an episode never holds its raw
frames in memory. Frame k has the presentation time k / fps. The encoder settings follow what
LeRobot records: yuv420p, a keyframe every ``GOP`` frames (fast random access while training).
"""

from __future__ import annotations

from fractions import Fraction
import pathlib

import av
import numpy as np

from pi0_policy.data.layout import PIX_FMT

# Keyframe interval (frames); LeRobot uses 2 so that any frame decodes quickly.
GOP = 2
# Constant rate factor (quality; lower is better) and speed preset per encoder: fast presets,
# because recording encodes every camera live.
CRF = {'libx264': '23', 'libsvtav1': '30'}
PRESET = {'libx264': 'veryfast', 'libsvtav1': '12'}
# Encoders known to work with the options below.
SUPPORTED_ENCODERS = ('libx264', 'libsvtav1')


def check_encoder(name: str) -> None:
    """
    Check that a video encoder is supported and present in this FFmpeg build.

    Raises:
        ValueError: When it is not.
    """
    if name not in SUPPORTED_ENCODERS or name not in av.codecs_available:
        available = [e for e in SUPPORTED_ENCODERS if e in av.codecs_available]
        raise ValueError(f'Video encoder {name!r} is not available; choose one of {available}.')


class VideoEncoder:
    """Write (H, W, 3) uint8 RGB frames to an mp4 file at a fixed rate."""

    def __init__(self, path: str | pathlib.Path, *, fps: int, height: int, width: int,
                 encoder: str = 'libx264') -> None:
        """
        Open the file and the encoder.

        Args:
            path: The mp4 file to create.
            fps: Frame rate (Hz).
            height: Frame rows (even).
            width: Frame columns (even).
            encoder: PyAV encoder name (``SUPPORTED_ENCODERS``).

        Raises:
            ValueError: On an unavailable encoder.
        """
        check_encoder(encoder)
        self.path = pathlib.Path(path)
        self.shape = (int(height), int(width), 3)
        self.frames = 0
        self._container = av.open(str(self.path), mode='w', format='mp4')
        self._stream = self._container.add_stream(
            encoder, rate=Fraction(int(fps), 1),
            options={'crf': CRF[encoder], 'g': str(GOP), 'preset': PRESET[encoder]})
        self._stream.width, self._stream.height = int(width), int(height)
        self._stream.pix_fmt = PIX_FMT
        self._stream.time_base = Fraction(1, int(fps))

    def add(self, rgb: np.ndarray) -> None:
        """
        Encode one frame.

        Raises:
            ValueError: When the frame is not (H, W, 3) uint8 of the encoder's size.
        """
        if rgb.shape != self.shape or rgb.dtype != np.uint8:
            raise ValueError(f'Video frame for {self.path.name} has shape {rgb.shape} and dtype '
                             f'{rgb.dtype}; expected {self.shape} uint8 (every frame of a camera '
                             'must keep one size).')
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format='rgb24')
        frame.pts = self.frames
        self._container.mux(self._stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and close the file."""
        if self._container is None:
            return
        try:
            self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()
            self._container = None


def decode_video(path: str | pathlib.Path, *, start_s: float = 0.0,
                 end_s: float | None = None) -> np.ndarray:
    """
    Decode the frames of an mp4 whose presentation time lies in [start_s, end_s).

    Args:
        path: The mp4 file.
        start_s: First time (s) to keep (episodes packed in one file start at their offset).
        end_s: End time (s, exclusive); None: to the end of the file.

    Returns:
        (T, H, W, 3) uint8 RGB frames.

    Raises:
        ValueError: When the file does not open or holds no video stream.
    """
    half_frame = 1e-4  # s; presentation times are exact multiples of 1/fps up to rounding.
    try:
        container = av.open(str(path))
    except (OSError, av.error.FFmpegError) as e:
        raise ValueError(f'Cannot open video {path}: {e}') from e
    with container:
        if not container.streams.video:
            raise ValueError(f'{path} holds no video stream.')
        rate = float(container.streams.video[0].average_rate or 1)
        frames = []
        for i, frame in enumerate(container.decode(video=0)):
            t = float(frame.time) if frame.time is not None else i / rate
            if t < start_s - half_frame:
                continue
            if end_s is not None and t >= end_s - half_frame:
                break
            frames.append(frame.to_ndarray(format='rgb24'))
    if not frames:
        return np.zeros((0, 0, 0, 3), np.uint8)
    return np.stack(frames)
