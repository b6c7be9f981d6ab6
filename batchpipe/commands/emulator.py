"""`batchpipe emulator`: serve the loopback emulator of both batch APIs until interrupted."""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import LocalConfig
from ..errors import CommandError
from ..service.emulator import Emulator, check_loopback, load_faults, parse_delays
from ..service.responders import make_responder

if TYPE_CHECKING:
    import argparse
    from types import FrameType


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "emulator",
        help="serve a loopback emulator of the OpenAI and Anthropic batch APIs",
        description="Serve OpenAI's Batch + Files APIs and Anthropic's Message Batches on a loopback address, "
        "over the batch engine, until interrupted. Prints OPENAI_BASE_URL=... ANTHROPIC_BASE_URL=...",
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: 0, a free port)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where files and batches are kept (default: a temporary folder removed on exit)",
    )
    parser.add_argument(
        "--faults", type=Path, default=None, help="fault spec, JSON or YAML (see batchpipe.service.emulator)"
    )
    parser.add_argument(
        "--delays",
        default="",
        metavar="validating=S,in_progress=S,finalizing=S",
        help="seconds in each batch state (default: all 0)",
    )
    parser.add_argument(
        "--responder-url",
        default=None,
        help="answer through an OpenAI-compatible server at this base URL (default: offline answers)",
    )
    parser.add_argument("--responder-model", default=None, help="model name for --responder-url")
    parser.set_defaults(func=run_emulator)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM stops the emulator as Ctrl-C does, so that a temporary state folder is removed."""
    raise KeyboardInterrupt


def run_emulator(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM."""
    try:
        host = check_loopback(args.host)
        timing = parse_delays(args.delays)
        faults = load_faults(args.faults) if args.faults else None
        responder = None
        if args.responder_url:
            local = LocalConfig(
                responder="openai-compatible",
                base_url=args.responder_url,
                api_key_env=None,
                concurrency=4,
                state_dir="",
                delays={},
                faults={},
            )
            responder = make_responder(local, model=args.responder_model)
    except (ValueError, OSError) as exc:
        raise CommandError(str(exc)) from None
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="batchpipe-emulator-"))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        emulator = Emulator(state_dir, faults=faults, timing=timing, responder=responder, host=host, port=args.port)
        try:
            emulator.start()
        except OSError as exc:
            raise CommandError(f"cannot listen on {host}:{args.port}: {exc.strerror or exc}") from None
        with emulator:
            print(
                f"OPENAI_BASE_URL={emulator.openai_base_url} ANTHROPIC_BASE_URL={emulator.anthropic_base_url}",
                flush=True,
            )
            print(f"batchpipe emulator: state in {state_dir}; Ctrl-C to stop", file=sys.stderr, flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if args.state_dir is None:
            shutil.rmtree(state_dir, ignore_errors=True)
