"""The ``intentra`` command line: keygen, pubkey, serve, send, demo.

Bad arguments, missing or malformed key files and unusable addresses exit
with status 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import warnings
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, NoReturn

from intentra.aio.transport import Message, Transport, parse_address
from intentra.constants import Intent
from intentra.errors import IntentraError, KeyFileError, SendQueueFullError, TransportClosedError
from intentra.keys import PrivateKey, PublicKey

EXIT_USAGE = 2


class UsageError(Exception):
    """A problem the user must fix; printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"intentra: error: {message} (see --help)\n")


_LOOP = "auto"


def _run(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when installed (``--loop auto``, the default), else asyncio's loop."""
    if _LOOP != "asyncio":
        try:
            import uvloop  # noqa: PLC0415 - optional extra
        except ImportError:
            if _LOOP == "uvloop":
                coro.close()
                raise UsageError("--loop uvloop needs uvloop: pip install 'intentra[fast]'") \
                    from None
        else:
            result: int = uvloop.run(coro)
            return result
    return asyncio.run(coro)


def _load_key(path: str) -> PrivateKey:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        key = PrivateKey.load(path)
    for w in caught:
        print(f"intentra: warning: {w.message}", file=sys.stderr)
    return key


def _load_allow(path: str) -> list[PublicKey]:
    try:
        lines = Path(path).read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read allow-list {path!r}: {exc}") from exc
    keys = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            keys.append(PublicKey.from_base64(text))
        except KeyFileError as exc:
            raise KeyFileError(f"allow-list {path!r} line {number}: {exc}") from exc
    return keys


def _intent(text: str) -> Intent:
    try:
        return Intent[text.upper()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"invalid intent {text!r}: choose reliable or realtime") from None


def _priority(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 7:
        raise argparse.ArgumentTypeError(f"invalid priority {text!r}: an integer 0..7")
    return value


def _address(text: str) -> tuple[str, int]:
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(kind: Callable[[str], float]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = -1
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
        return value
    return parse


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability in [0, 1]")
    return value


def _duration(text: str) -> float:
    from intentra.testing.netem import parse_duration  # noqa: PLC0415

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (a long-running command's clean exit)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


# ------------------------------------------------------------------ commands

def cmd_keygen(args: argparse.Namespace) -> int:
    key = PrivateKey.generate()
    key.save(args.file)
    print(key.public_key.to_base64())
    return 0


def cmd_pubkey(args: argparse.Namespace) -> int:
    print(_load_key(args.file).public_key.to_base64())
    return 0


async def _serve(args: argparse.Namespace) -> int:
    key = _load_key(args.key)
    allowed = _load_allow(args.allow) if args.allow else None
    try:
        transport = await Transport.bind(args.bind, key, allowed, metrics_address=args.metrics)
    except OSError as exc:
        raise UsageError(f"cannot bind {args.bind[0]}:{args.bind[1]} or the metrics address: "
                         f"{exc.strerror or exc}") from None
    # Handlers before the announcement: a supervisor may signal as soon as it reads it.
    stop = _stop_on_signals()
    host, port = transport.local_address
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    print(f"intentra serving on {shown}", flush=True)
    print(f"public key: {key.public_key.to_base64()}", flush=True)
    print(f"mode: {'echo' if args.echo else 'hub'}", flush=True)
    if transport._metrics_server is not None:
        mport = transport._metrics_server.server_port
        print(f"metrics: http://{parse_address(args.metrics)[0]}:{mport}/metrics", flush=True)
    dropped = 0

    async def relay() -> None:
        nonlocal dropped
        while True:
            try:
                msg: Message | None = await transport.receive()
            except TransportClosedError:
                return
            while msg is not None:  # drain without a loop turn per message
                try:
                    if args.echo:
                        msg.peer.send_nowait(msg.data, msg.intent, msg.priority)
                    else:
                        transport.broadcast_nowait(msg.data, msg.intent, msg.priority,
                                                   exclude=msg.peer)
                except SendQueueFullError:
                    dropped += 1  # one slow peer must not stall the others
                except IntentraError:
                    pass  # the sender's session ended meanwhile
                msg = transport.receive_nowait()

    task = asyncio.create_task(relay())
    await stop.wait()
    peers = len(transport.peers)
    await transport.close()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    print(f"closed {peers} session(s); relay drops on full queues: {dropped}", flush=True)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    return _run(_serve(args))


async def _send(args: argparse.Namespace) -> int:
    key = _load_key(args.key) if args.key else PrivateKey.generate()
    server_key = PublicKey.from_base64(args.server_key) if args.server_key else None
    host = args.to[0]
    bind = "[::]:0" if ":" in host else "0.0.0.0:0"
    async with await Transport.bind(bind, key) as transport:
        peer = await transport.connect(args.to, server_key=server_key)
        messages = [m.encode() for m in args.message] if args.message else \
            [line.rstrip("\n").encode() for line in sys.stdin if line.strip()]
        for data in messages:
            await peer.send(data, args.intent, args.priority)
        loop = asyncio.get_running_loop()
        end = loop.time() + args.wait
        while (left := end - loop.time()) > 0:
            try:
                msg = await asyncio.wait_for(transport.receive(), left)
            except TimeoutError:
                break
            sys.stdout.write(msg.data.decode("utf-8", "backslashreplace") + "\n")
            sys.stdout.flush()
        await peer.close()
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    return _run(_send(args))


async def _proxy(args: argparse.Namespace) -> int:
    from intentra.testing.netem import Faults, UdpProxy  # noqa: PLC0415

    faults = Faults(loss=args.loss, dup=args.dup, reorder=args.reorder, delay=args.delay,
                    jitter=args.jitter, truncate=args.truncate, corrupt=args.corrupt)
    try:
        proxy = await UdpProxy.start(args.to, listen=args.listen, forward=faults,
                                     backward=faults, seed=args.seed)
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.listen[0]}:{args.listen[1]}: "
                         f"{exc.strerror or exc}") from None
    stop = _stop_on_signals()
    host, port = proxy.address
    print(f"intentra proxy on {host}:{port} -> {args.to[0]}:{args.to[1]}, "
          f"faults each way: {faults.describe()}, seed {args.seed}", flush=True)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.report_every)
        if not stop.is_set():
            print(proxy.report(), flush=True)
    await proxy.close()
    print(proxy.report(), flush=True)
    return 0


def cmd_proxy(args: argparse.Namespace) -> int:
    return _run(_proxy(args))


def cmd_demo(args: argparse.Namespace) -> int:
    from intentra.demo import run_demo  # noqa: PLC0415 - keeps the CLI's start fast

    return _run(run_demo(peers=args.peers, rate=args.rate, duration=args.duration,
                         size=args.size, reliable_every=args.reliable_every,
                         plain=args.plain, loop=args.loop))


# ------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="intentra", description=(
        "Encrypted, authenticated multi-peer UDP transport for real-time state."))
    parser.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto",
                        help="event loop: uvloop when installed (auto), or force one")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("keygen", help="write a new private key file (mode 0600)")
    p.add_argument("file", help="path of the new key file (never overwritten)")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("pubkey", help="print the public key of a private key file")
    p.add_argument("file")
    p.set_defaults(func=cmd_pubkey)

    p = sub.add_parser("serve", help="run an endpoint: a hub (default) or an echo server")
    p.add_argument("--bind", required=True, type=_address, metavar="HOST:PORT")
    p.add_argument("--key", required=True, metavar="FILE", help="private key file")
    p.add_argument("--allow", metavar="FILE", help="file of allowed public keys, one per line")
    p.add_argument("--echo", action="store_true", help="send each message back to its sender")
    p.add_argument("--metrics", type=_address, metavar="HOST:PORT",
                   help="serve Prometheus /metrics over HTTP here")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("send", help="connect, send messages, print what comes back")
    p.add_argument("--to", required=True, type=_address, metavar="HOST:PORT")
    p.add_argument("--key", metavar="FILE", help="private key file (default: a new one)")
    p.add_argument("--server-key", metavar="PUB", help="pin the server's public key (base64)")
    p.add_argument("--intent", type=_intent, default=Intent.RELIABLE,
                   help="reliable (default) or realtime")
    p.add_argument("--priority", type=_priority, default=0, help="0..7 (default 0)")
    p.add_argument("--wait", type=_positive(float), default=1.0,
                   help="seconds to print replies after sending (default 1)")
    p.add_argument("message", nargs="*", help="messages to send (default: lines of stdin)")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("proxy", help="a UDP proxy that injects faults, to try an application "
                                     "under loss, duplication, reordering, delay and corruption")
    p.add_argument("--listen", type=_address, default=("127.0.0.1", 0), metavar="HOST:PORT",
                   help="where clients send (default 127.0.0.1:0, printed at start)")
    p.add_argument("--to", required=True, type=_address, metavar="HOST:PORT",
                   help="the server the proxy forwards to")
    for name, text in (("loss", "drop"), ("dup", "duplicate"), ("reorder", "hold back"),
                       ("truncate", "truncate"), ("corrupt", "flip one bit of")):
        p.add_argument(f"--{name}", type=_probability, default=0.0, metavar="P",
                       help=f"probability to {text} a datagram, each way (0)")
    p.add_argument("--delay", type=_duration, default=0.0, metavar="T",
                   help="added delay, e.g. 20ms (0)")
    p.add_argument("--jitter", type=_duration, default=0.0, metavar="T",
                   help="extra random delay up to T, e.g. 30ms (0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault decisions (0)")
    p.add_argument("--report-every", type=_positive(float), default=10.0, metavar="S",
                   help="print the fault counts every S seconds (10)")
    p.set_defaults(func=cmd_proxy)

    p = sub.add_parser("demo", help="a hub and simulated peers on loopback, with a summary")
    p.add_argument("--peers", type=_positive(int), default=50, help="simulated peers (50)")
    p.add_argument("--rate", type=_positive(float), default=50.0,
                   help="state updates per peer per second (50)")
    p.add_argument("--duration", type=_positive(float), default=10.0, help="seconds (10)")
    p.add_argument("--size", type=_positive(int), default=64, help="message bytes (64)")
    p.add_argument("--reliable-every", type=_positive(int), default=10,
                   help="every Nth update is RELIABLE, the rest REALTIME (10)")
    p.add_argument("--plain", action="store_true", help="plain progress lines, no live display")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    global _LOOP
    parser = build_parser()
    args = parser.parse_args(argv)
    _LOOP = args.loop
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except (IntentraError, UsageError, ValueError) as exc:
        print(f"intentra: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"intentra: error: {exc.strerror or exc}"
              + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr)
        return EXIT_USAGE
    return result
