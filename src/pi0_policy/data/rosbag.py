"""
``pi0-policy bag2dataset``: convert rosbag2 recordings (MCAP or sqlite3) into a LeRobot dataset.

Each bag becomes one episode. The bag is read with ``rosbags`` (no ROS install needed), its
messages are fed in log-time order to the same ``RecordingSession`` the live recorder node uses,
with the bag's log time as the clock, so the topics, the alignment, the tolerance and the
dropped/late accounting are those of a live recording.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import dataclasses
import logging
import pathlib
import sys

import embodiment_adapters
from pi0_policy.data.alignment import AlignmentConfig
from pi0_policy.data.recording import DEFAULT_MAX_DROP_FRACTION, RecordingSession

_LOG = logging.getLogger(__name__)

NANOSECONDS = 1e9
# Message definitions of bags that carry none (sqlite3 bags of older recorders).
DEFAULT_TYPESTORE = 'ROS2_JAZZY'


@dataclasses.dataclass(frozen=True)
class BagResult:
    """What one bag became."""

    # The bag.
    bag: pathlib.Path
    # Episode index in the dataset, or None when nothing was saved.
    episode: int | None
    # Alignment counts (``AlignmentReport``).
    report: object
    # Messages of recorded topics read.
    messages: int


def convert_bag(bag: str | pathlib.Path, session: RecordingSession, task: str) -> BagResult:
    """
    Convert one bag into one episode of the session's dataset.

    Raises:
        ValueError: When the bag does not open or lacks every recorded topic.
    """
    from rosbags.highlevel import AnyReader, AnyReaderError
    from rosbags.typesys import get_typestore, Stores
    bag = pathlib.Path(bag)
    typestore = get_typestore(getattr(Stores, DEFAULT_TYPESTORE))
    try:
        reader = AnyReader([bag], default_typestore=typestore)
        reader.open()
    except (AnyReaderError, OSError) as e:
        raise ValueError(f'Cannot open rosbag2 {bag}: {e}') from e
    try:
        wanted = [c for c in reader.connections if c.topic in session.by_topic]
        absent = sorted(set(session.by_topic) - {c.topic for c in wanted})
        if absent:
            raise ValueError(f'{bag} lacks the topics {absent} of robot '
                             f'{session.adapter.name!r}; it has '
                             f'{sorted({c.topic for c in reader.connections})}.')
        session.start(task)
        count = 0
        for connection, log_ns, raw in reader.messages(connections=wanted):
            now = log_ns / NANOSECONDS
            try:
                session.push(connection.topic, now, reader.deserialize(raw, connection.msgtype))
            except ValueError as e:
                _LOG.warning('%s: skipped a message on %s: %s', bag, connection.topic, e)
            session.advance(now)
            count += 1
        saved, report = session.stop()
    except BaseException:
        session.discard()
        raise
    finally:
        reader.close()
    return BagResult(bag=bag, episode=None if saved is None else saved.index, report=report,
                     messages=count)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``bag2dataset`` flags."""
    parser.add_argument('bags', nargs='+', type=pathlib.Path, metavar='BAG',
                        help='rosbag2 folder (MCAP or sqlite3); one episode each')
    parser.add_argument('--robot', required=True, help='robot config name or YAML')
    parser.add_argument('--out', required=True, type=pathlib.Path,
                        help='dataset folder (new, or one of the same robot to extend)')
    parser.add_argument('--task', required=True, help='task instruction of the episodes')
    parser.add_argument('--fps', type=int, help='frame rate (default: control_rate_hz)')
    parser.add_argument('--tolerance-s', type=float,
                        help='largest |sample - frame| time (default: half a period)')
    parser.add_argument('--hold-timeout-s', type=float, default=1.0,
                        help='oldest command still in effect (s)')
    parser.add_argument('--cameras', nargs='+',
                        help='cameras to record (default: those feeding the model)')
    parser.add_argument('--vcodec', default='libx264', choices=('libx264', 'libsvtav1'))
    parser.add_argument('--max-drop-fraction', type=float, default=DEFAULT_MAX_DROP_FRACTION,
                        help='refuse an episode with a larger share of dropped frames')


def main_from_args(args: argparse.Namespace) -> int:
    """Run ``bag2dataset``; exit status 0 when every bag became an episode, 1 otherwise."""
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    try:
        adapter = embodiment_adapters.load_adapter(args.robot)
        fps = args.fps or int(round(adapter.config.control_rate_hz))
        config = AlignmentConfig(fps=fps, tolerance_s=args.tolerance_s, latency_s=0.0,
                                 hold_timeout_s=args.hold_timeout_s)
        session = RecordingSession(args.out, adapter, config, cameras=args.cameras,
                                   video_codec=args.vcodec,
                                   max_drop_fraction=args.max_drop_fraction)
    except ValueError as e:
        print(f'ERROR: {e}', file=sys.stderr)
        return 2
    status = 0
    for bag in args.bags:
        try:
            result = convert_bag(bag, session, args.task)
        except ValueError as e:
            print(f'{bag}: ERROR: {e}', file=sys.stderr)
            status = 1
            continue
        where = 'not saved' if result.episode is None else f'episode {result.episode}'
        print(f'{bag}: {where}: {result.report.summary()}')
        status = status if result.episode is not None else 1
    print(f'{args.out}: {session.num_episodes} episodes')
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m pi0_policy.data.rosbag``."""
    parser = argparse.ArgumentParser(prog='pi0-policy bag2dataset')
    add_arguments(parser)
    return main_from_args(parser.parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
