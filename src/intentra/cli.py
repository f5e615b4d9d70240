"""The ``intentra`` command line: keygen, pubkey, serve, send, demo.

Bad arguments, missing or malformed key files and unusable addresses exit
with status 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
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


def _say(text: str) -> None:
    """One line in one write: workers share the supervisor's stdout, so lines must not mix."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _shown(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _mode(args: argparse.Namespace) -> str:
    return "sink" if args.sink else "echo" if args.echo else "hub"


async def _serve(args: argparse.Namespace) -> int:
    key = _load_key(args.key)
    allowed = _load_allow(args.allow) if args.allow else None
    worker = args.worker_fd is not None
    metrics = args.metrics
    extra: dict[str, Any] = {}
    if worker:
        # A worker of serve --workers: its socket, cookie master and conn_id class
        # come from the supervisor (the master on stdin, never on the command line).
        from intentra.workers import die_with_parent  # noqa: PLC0415

        die_with_parent()
        master = bytes.fromhex(sys.stdin.readline().strip())
        extra = {"sock": socket.socket(fileno=args.worker_fd), "cookie_master": master,
                 "conn_id_class": (args.worker_index, args.workers)}
        if metrics is not None:
            metrics = (metrics[0], metrics[1] + args.worker_index if metrics[1] else 0)
    try:
        transport = await Transport.bind(args.bind, key, allowed, metrics_address=metrics,
                                         sink=args.sink, **extra)
    except OSError as exc:
        raise UsageError(f"cannot bind {args.bind[0]}:{args.bind[1]} or the metrics address: "
                         f"{exc.strerror or exc}") from None
    # Handlers before the announcement: a supervisor may signal as soon as it reads it.
    stop = _stop_on_signals()
    shown = _shown(*transport.local_address)
    prefix = f"worker {args.worker_index}: " if worker else ""
    if not worker:
        print(f"intentra serving on {shown}", flush=True)
        print(f"public key: {key.public_key.to_base64()}", flush=True)
        print(f"mode: {_mode(args)}", flush=True)
    if transport._metrics_server is not None:
        mport = transport._metrics_server.server_port
        _say(f"{prefix}metrics: http://{parse_address(args.metrics)[0]}:{mport}/metrics")
    dropped = 0
    if args.sink:
        await stop.wait()
        peers = len(transport.peers)
        await transport.close()
        _say(f"{prefix}closed {peers} session(s); messages counted: {transport.sink_messages}")
        return 0

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
    _say(f"{prefix}closed {peers} session(s); relay drops on full queues: {dropped}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    if args.echo and args.sink:
        raise UsageError("choose one of --echo and --sink")
    if args.workers > 1 and args.worker_fd is None:
        return _supervise(args)
    return _run(_serve(args))


def _supervise(args: argparse.Namespace) -> int:
    """serve --workers N: N processes on one port, conn_id steering, one cookie master."""
    from intentra.workers import reuseport_sockets  # noqa: PLC0415

    if not (args.echo or args.sink):
        raise UsageError("--workers needs --echo or --sink: a hub relays between its own "
                         "peers, and with several workers each sees only some of them")
    key = _load_key(args.key)  # fail here, once, on a bad key file
    if args.allow:
        _load_allow(args.allow)
    host, port = args.bind
    try:
        sockets, steered = reuseport_sockets(host, port, args.workers)
    except OSError as exc:
        raise UsageError(f"cannot bind {host}:{port}: {exc.strerror or exc}") from None
    master = os.urandom(32).hex()
    forwarded = list(sys.argv[1:] if args.argv is None else args.argv)
    children: list[subprocess.Popen[bytes]] = []
    stop = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for index, sock in enumerate(sockets):
            cmd = [sys.executable, "-m", "intentra", *forwarded,
                   "--worker-fd", str(sock.fileno()), "--worker-index", str(index)]
            child = subprocess.Popen(cmd, stdin=subprocess.PIPE,  # noqa: S603 - ourselves
                                     pass_fds=(sock.fileno(),))
            assert child.stdin is not None
            child.stdin.write(master.encode() + b"\n")
            child.stdin.close()
            children.append(child)
        print(f"intentra serving on {_shown(*sockets[0].getsockname()[:2])}", flush=True)
        print(f"public key: {key.public_key.to_base64()}", flush=True)
        print(f"mode: {_mode(args)}, {args.workers} workers, sessions steered by conn_id: "
              f"{'yes' if steered else 'no (kernel hash only; roaming may lose a session)'}",
              flush=True)
        # Watch all of them: whichever worker dies on its own, the port's steering
        # order is gone, so the others are stopped too.
        while True:
            running = [child.poll() is None for child in children]  # poll (reap) every one
            if all(running):
                time.sleep(0.1)
                continue
            if not any(running):
                break
            if not stop:
                on_signal(signal.SIGTERM, None)
            time.sleep(0.1)
        codes = [child.returncode for child in children]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sock in sockets:
            sock.close()
    return 0 if all(code == 0 for code in codes) else 1


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


def _scenarios(text: str) -> tuple[str, ...]:
    from intentra.bench import EXTRA_SCENARIOS, SCENARIOS  # noqa: PLC0415

    names = tuple(n.strip() for n in text.split(",") if n.strip())
    known = SCENARIOS + EXTRA_SCENARIOS
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {', '.join(unknown) or text!r}; choose from {', '.join(known)}")
    return names


def _counts(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(n) for n in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,2, got {text!r}")
    return values


def _loads(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(n) for n in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(0 < v < 100 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected positive multiples of the link like 0.4,2.4, got {text!r}")
    return values


def cmd_bench(args: argparse.Namespace) -> int:
    from intentra.bench import SCENARIOS, Options, RoleError, run  # noqa: PLC0415
    from intentra.bench.report import plot, print_table, write_json  # noqa: PLC0415

    chosen = {k: v for k, v in {
        "peers": args.peers, "size": args.size, "sessions": args.sessions,
        "step_seconds": args.step, "stream_seconds": args.duration,
        "handshake_seconds": args.duration, "latency_seconds": args.duration,
        "bottleneck_seconds": args.duration, "bottleneck_loads": args.loads,
    }.items() if v is not None}
    chosen["scenarios"] = args.scenarios or SCENARIOS
    chosen["workers"] = args.workers
    chosen["baselines"] = () if args.no_baselines else ("raw", "quic")
    options = Options.quick(**chosen) if args.quick else Options(**chosen)
    try:
        report = run(options)
    except RoleError as exc:
        raise UsageError(f"bench failed: {exc}") from None
    print_table(report)
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        if plot(report, args.plot):
            print(f"wrote {args.plot}")
        else:
            print("no plot: matplotlib is not installed (pip install 'intentra[bench]')",
                  file=sys.stderr)
    return 0


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
    p.add_argument("--sink", action="store_true",
                   help="count messages without delivering them (load tests; see the metric "
                        "intentra_sink_messages_total)")
    p.add_argument("--workers", type=_positive(int), default=1, metavar="N",
                   help="N processes on one port (SO_REUSEPORT), sessions steered by conn_id; "
                        "needs --echo or --sink (1)")
    p.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
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

    p = sub.add_parser("bench", help="load scenarios against baselines, side by side")
    p.add_argument("scenarios", nargs="?", type=_scenarios, metavar="SCENARIO[,SCENARIO...]",
                   help="fan-in, stream, handshakes, latency, sessions (default: these "
                   "five); bottleneck (root only: a sweep through a real 10 Mbit/s link)")
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    p.add_argument("--peers", type=_positive(int), help="fan-in and latency peers (1000)")
    p.add_argument("--size", type=_positive(int), help="message bytes (128)")
    p.add_argument("--step", type=_positive(float), help="seconds per fan-in sweep step (2)")
    p.add_argument("--duration", type=_positive(float),
                   help="seconds of each stream, handshake, latency and bottleneck run (3; "
                   "bottleneck 4)")
    p.add_argument("--loads", type=_loads, metavar="X[,X...]",
                   help="bottleneck: offered REALTIME loads, multiples of the link "
                   "(0.4,0.8,1.2,2.4)")
    p.add_argument("--sessions", type=_positive(int), help="idle sessions to hold (10000)")
    p.add_argument("--workers", type=_counts, default=(1,), metavar="N[,N...]",
                   help="fan-in server processes on one port, e.g. 1,2 (1)")
    p.add_argument("--no-baselines", action="store_true", help="skip raw UDP and aioquic")
    p.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    p.add_argument("--plot", metavar="FILE", help="write PNG plots (needs matplotlib)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    global _LOOP
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = None if argv is None else list(argv)
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
