"""Remove each defence once and watch the adversarial suite go red (mutation check).

Issue 4 asks that every defence of docs/protocol.md sections 5, 7, 9 and 10 (and the header
checks of section 3) has at least one test that fails when the defence is
removed. This script makes that claim checkable: :data:`MUTATIONS` names each
defence together with an exact text substitution that removes or weakens it in
one file of ``src/intentra``. For each mutation the script copies ``src/`` to a
temporary directory, applies the substitution there (the working tree is never
touched), and runs

    python -m pytest -x -q -p no:cacheprovider tests/adversarial tests/test_hardening.py

with ``PYTHONPATH=<copy>/src`` first, so the mutant shadows the editable
install. Before pytest runs, the same interpreter and environment must import
``intentra`` from the copy, or the run is an error. A mutant is *killed* (red)
when pytest fails, *survives* (green) when it passes. An unmutated copy
(``baseline``) must pass and a deliberately broken one (``canary``) must fail,
or the results mean nothing.

An old text that is not found exactly once is an error before anything runs:
the list cannot silently rot when the source changes. A few mutations are
*expected survivors*: equivalent or not observable by a functional test; each
says why in ``survives``.

This file is not collected by pytest (its name does not start with ``test_``).

Usage (from the repository root)::

    .venv/bin/python tests/adversarial/remove_defences.py            # everything
    .venv/bin/python tests/adversarial/remove_defences.py --list     # names, check texts
    .venv/bin/python tests/adversarial/remove_defences.py --only s4-no-replay-check \\
        --only s8-no-strike-decay
    .venv/bin/python tests/adversarial/remove_defences.py --jobs 1   # one pytest at a time
    .venv/bin/python tests/adversarial/remove_defences.py --no-baseline \
        --ignore tests/adversarial/test_defence_gaps.py   # who else kills each mutant?

Exit status: 0 when every mutant is killed (expected survivors aside), 1 when
one survives (or an expected survivor is killed: update its entry), 2 when the
setup is wrong (stale old text, baseline red, canary green, wrong import).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[2]
SRC: Final = ROOT / "src"
PACKAGE: Final = SRC / "intentra"
TESTS: Final = ("tests/adversarial", "tests/test_hardening.py")
DEFAULT_TIMEOUT: Final = 600.0


@dataclass(frozen=True)
class Mutation:
    """One defence removed: ``edits`` are (old, new) pairs, each old text exactly once."""

    name: str
    section: str
    file: str  # relative to src/intentra
    edits: tuple[tuple[str, str], ...]
    what: str
    survives: str = ""  # non-empty: an expected survivor, and why


def m(name: str, section: str, file: str, old: str, new: str, what: str,
      survives: str = "") -> Mutation:
    """A mutation made of one substitution."""
    return Mutation(name, section, file, ((old, new),), what, survives)


_FAILED_AEAD: Final = (
    "        if opened is None:\n"
    "            self._failed_open(conn_id, home, now)\n"
    "            stats.packets_dropped_crypto += 1\n"
    "            return\n")


def _after_failed_aead(extra: str) -> str:
    """The failed-AEAD branch of Endpoint.receive_datagram, doing ``extra`` first."""
    return ("        if opened is None:\n"
            f"            {extra}  # mutant\n"
            "            self._failed_open(conn_id, home, now)\n"
            "            stats.packets_dropped_crypto += 1\n"
            "            return\n")


_AAD_IGNORED: Final = '''\
from cryptography.hazmat.primitives.ciphers.aead import AESGCM as _RealAESGCM


class AESGCM:  # mutant: the associated data (the header) is never authenticated
    def __init__(self, key):
        self._a = _RealAESGCM(key)

    def encrypt(self, nonce, data, aad):
        return self._a.encrypt(nonce, data, b"")

    def decrypt(self, nonce, data, aad):
        return self._a.decrypt(nonce, data, b"")
'''


def _nonce_layout(expr: str) -> str:
    return f'''\
class _MutantNonce:  # mutant: nonce = {expr}
    size = 12

    @staticmethod
    def pack(conn_id, pn):
        return struct.pack("!IQ", {expr})


_NONCE = _MutantNonce()
'''


MUTATIONS: Final[tuple[Mutation, ...]] = (
    # ------------------------------------------------------------------ sanity
    m("canary", "-", "core/wire.py",
      "    if b0 >> 4 != VERSION:\n", "    if True:  # mutant: everything malformed\n",
      "every datagram is malformed: MUST go red, or the copy is not what is tested"),

    # ------------------------------------------------------- section 3: header checks
    m("s3-no-max-packet-size", "3", "core/wire.py",
      "if n < HEADER_LEN or n > MAX_PACKET_SIZE:", "if n < HEADER_LEN:",
      "datagrams above MAX_PACKET_SIZE are parsed"),
    m("s3-any-version", "3", "core/wire.py",
      "    if b0 >> 4 != VERSION:\n", "    if b0 >> 4 > 15:\n",
      "the version nibble is not checked"),
    m("s3-reserved-bits", "3/14.4", "core/wire.py",
      "        if extended:\n            return None  # X only in DATA (section 14.4)\n", "",
      "bit 2 of byte 1 (X) may be set in HS, ACK and CLOSE"),
    # ------------------------------------ section 14: extended DATA, fragments and lanes
    m("s14-extended-min-payload", "14.4", "core/wire.py",
      "        if extended and payload_len < _MIN_EXTENDED_PAYLOAD[intent]:\n"
      "            return None  # section 14.4\n", "",
      "extended DATA shorter than rseq and the smallest record reaches the AEAD"),
    m("s14-total-above-max", "14.5", "core/wire.py",
      "            if total > max_total or offset + length > total:",
      "            if offset + length > total:",
      "a fragment may declare a message above max_message_size"),
    m("s14-beyond-declared-total", "14.5", "core/wire.py",
      "            if total > max_total or offset + length > total:",
      "            if total > max_total:",
      "a fragment may reach beyond the size its message declares"),
    m("s14-unknown-flags", "14.5", "core/wire.py",
      "        if flags & ~FRAGMENT_FLAG:\n            return None\n", "",
      "record flag bits other than F are ignored"),
    Mutation("s14-no-overlap-check", "14.5", "core/lanes.py", (
        ('            raise Violation(f"fragment at {offset} overlaps bytes held")',
         '            pass  # mutant'),
        ('            raise Violation(f"fragment at {offset}+{length} overlaps bytes held")',
         '            pass  # mutant')),
        "fragments overlapping bytes held are taken"),
    m("s14-other-total-or-lane", "14.5", "core/lanes.py",
      "        if total != self.total or lane != self.lane:", "        if False:",
      "a fragment declaring another total (or lane, REALTIME) joins the partial message"),
    m("s14-delivered-lseq", "14.5", "core/lanes.py",
      "        if 0 < ((nxt - lseq) & _MASK) < _HALF:\n            raise Violation(",
      "        if False:\n            raise Violation(",
      "a record for a message of its lane already delivered is taken"),
    m("s14-whole-while-fragments-held", "14.5", "core/lanes.py",
      "            if not fragment:\n                raise Violation(",
      "            if False:\n                raise Violation(",
      "a whole record for a message whose fragments are held is taken",
      survives="equivalent: the record then meets the held message's own checks "
      "(Partial.check), whose total or overlap rule refuses it with a strike just the "
      "same (test_a_whole_record_for_a_message_with_fragments_held_is_a_strike passes "
      "either way)"),
    m("s14-fragment-of-a-waiting-message", "14.5", "core/lanes.py",
      "        if waiting is not None and lseq in waiting:", "        if False:",
      "a record for a message held whole already is taken"),
    m("s14-realtime-session-bound", "14.7", "core/lanes.py",
      "        while self.used + cost > self.limit or (", "        while (",
      "partial REALTIME messages of one session are not bounded by max_realtime_reassembly"),
    m("s14-realtime-endpoint-bound", "14.7", "core/lanes.py",
      "budget is not None and budget.used + cost > budget.limit)", "False)",
      "partial REALTIME messages of all sessions are not bounded per endpoint"),
    m("s14-realtime-never-expire", "14.7", "core/lanes.py",
      "        partials = self.partials\n        while partials:\n",
      "        partials = self.partials\n        return  # mutant\n        while partials:\n",
      "partial REALTIME messages never expire at the deadline"),
    m("s14-realtime-bytes-kept-after-close", "14.7", "core/session.py",
      "        self.rt_reassembly.clear()\n", "",
      "a closed session's partial REALTIME bytes stay charged to the endpoint"),
    m("s14-credit-ignores-partials", "14.7", "core/reliable.py",
      "            held += lanes.held\n        return held + open_positions * self.reserve",
      "            pass\n        return held + open_positions * self.reserve",
      "partial and waiting RELIABLE messages do not count in the session's reservation "
      "in the endpoint-wide budget"),

    m("s3-a-bit-reliable-data", "3", "core/wire.py",
      "if conn_id == 0 or (intent == _RELIABLE and not eliciting):", "if conn_id == 0:",
      "RELIABLE DATA with A = 0 is parsed"),
    m("s3-a-bit-close", "3", "core/wire.py",
      "elif payload_len != CLOSE_PAYLOAD_LEN or ack or eliciting:  # CLOSE",
      "elif payload_len != CLOSE_PAYLOAD_LEN or ack:  # CLOSE",
      "CLOSE with A = 1 is parsed"),
    m("s3-a-bit-hs", "3", "core/wire.py",
      "if key_phase or eliciting or n != HEADER_LEN + payload_len or seq or ack:",
      "if key_phase or n != HEADER_LEN + payload_len or seq or ack:",
      "HS with A = 1 is parsed"),
    m("s3-control-priority", "3", "core/wire.py",
      "if intent != _RELIABLE or priority != 0:", "if intent != _RELIABLE:",
      "HS/ACK/CLOSE with a non-zero priority are accepted"),
    m("s3-sealed-length", "3", "core/wire.py",
      "if n != HEADER_LEN + payload_len + TAG_LEN or payload_len < _MIN_DATA_PAYLOAD[intent]:",
      "if payload_len < _MIN_DATA_PAYLOAD[intent]:",
      "DATA whose length disagrees with payload_len reaches the AEAD"),
    m("s3-data-min-payload", "3", "core/wire.py",
      "if n != HEADER_LEN + payload_len + TAG_LEN or payload_len < _MIN_DATA_PAYLOAD[intent]:",
      "if n != HEADER_LEN + payload_len + TAG_LEN:",
      "DATA below 3 (REALTIME) / 7 (RELIABLE) payload bytes is parsed"),
    m("s3-ack-length", "3", "core/wire.py",
      "            if payload_len != ACK_PAYLOAD_LEN:\n",
      "            if payload_len < ACK_PAYLOAD_LEN:\n",
      "ACK longer than 28 payload bytes is parsed"),
    m("s3-close-ack-field", "3", "core/wire.py",
      "elif payload_len != CLOSE_PAYLOAD_LEN or ack or eliciting:  # CLOSE",
      "elif payload_len != CLOSE_PAYLOAD_LEN or eliciting:  # CLOSE",
      "CLOSE with a non-zero ack field is parsed"),
    m("s3-hs-fields", "3", "core/wire.py",
      "if key_phase or eliciting or n != HEADER_LEN + payload_len or seq or ack:",
      "if eliciting or n != HEADER_LEN + payload_len:",
      "HS with key phase, seq or ack set is parsed"),

    # --------------------------------- sections 4-6: receive order of DATA, ACK, CLOSE
    m("s4-step2-any-session", "4-6", "core/endpoint.py",
      "        # 2. session lookup\n        session = self.sessions.get(conn_id)\n",
      "        # 2. session lookup\n        session = self.sessions.get(conn_id) or "
      "next(iter(self.sessions.values()), None)\n",
      "an unknown conn_id is not dropped as unknown but handed to some session"),
    m("s4-step3-no-rate-limit", "4-6", "core/endpoint.py",
      "        if not bucket.ready(now) or (fails is not None and not fails[not home]"
      ".ready(now)):\n",
      "        if False:\n",
      "the per-session token bucket and failed-open allowances are gone"),
    Mutation("s4-step3-bucket-after-aead", "4-6", "core/endpoint.py", (
        ("        if not bucket.ready(now) or (fails is not None and not fails[not home]"
         ".ready(now)):\n"
         "            stats.packets_dropped_rate_limit += 1\n"
         "            return\n", ""),
        ("        plaintext, moves_phase = opened\n",
         "        plaintext, moves_phase = opened\n"
         "        if not session.bucket.take(now):  # mutant: after the AEAD\n"
         "            stats.packets_dropped_rate_limit += 1\n"
         "            return\n")),
        "the token is taken after decryption: a flood costs an AEAD each"),
    m("s4-step3-no-failed-open-limit", "4-6", "core/endpoint.py",
      "(fails is not None and not fails[not home].ready(now))", "False",
      "opens that fail are not limited: a forged flood costs an AEAD open each (issue 9 item 4)"),
    m("s4-step3-forgery-spends-genuine-bucket", "4-6", "core/endpoint.py",
      "            self._failed_open(conn_id, home, now)\n",
      "            bucket.tokens -= 1.0  # mutant: one bucket for all, as before\n",
      "a failed open spends the bucket genuine packets need (issue 9 item 4)"),
    Mutation("s4-step3-one-failed-open-allowance", "4-6", "core/endpoint.py", (
        ("not fails[not home].ready(now)", "not fails[0].ready(now)"),
        ("        fails[not home].charge()\n", "        fails[0].charge()  # mutant\n")),
        "forgeries from anywhere spend the allowance of the peer's own address too"),
    m("s4-step4-no-replay-check", "4-6", "core/endpoint.py",
      "        if not replay.is_fresh(pn):\n", "        if False:\n",
      "no replay pre-check"),
    m("s4-replay-below-window", "4-6", "core/replay.py",
      "        if diff >= self.size:\n            return False\n", "",
      "packets older than the window are fresh"),
    m("s4-step6-mark-before-aead", "4-6", "core/endpoint.py",
      "        # 5. AEAD open; on failure nothing in the session changes.",
      "        replay.mark(pn)  # mutant: marked before authentication\n"
      "        # 5. AEAD open; on failure nothing in the session changes.",
      "a forgery burns its pn in the replay window"),
    m("s4-step6-no-mark", "4-6", "core/endpoint.py",
      "        replay.mark(pn)\n        self._authenticated(", "        self._authenticated(",
      "authenticated packets are never marked (replays accepted)"),
    m("s4-aad-not-header", "4-6", "core/aead.py",
      "from cryptography.hazmat.primitives.ciphers.aead import AESGCM\n", _AAD_IGNORED,
      "the AEAD does not authenticate the header (aad empty on both sides)"),
    m("s4-nonce-without-pn", "4-6", "core/aead.py",
      '_NONCE: Final = struct.Struct("!IQ")\n', _nonce_layout("conn_id, 0"),
      "nonce = conn_id || 0: every packet under one key reuses the nonce"),
    m("s4-nonce-without-conn-id", "4-6", "core/aead.py",
      '_NONCE: Final = struct.Struct("!IQ")\n', _nonce_layout("0, pn"),
      "nonce = 0 || pn instead of conn_id || pn"),
    m("s4-close-reuses-pn", "4-6", "core/session.py",
      "            pn = self.pn_next\n            if pn < self.config.pn_limit:\n",
      "            pn = self.pn_next - 1\n            if pn < self.config.pn_limit:\n",
      "CLOSE is sealed with the last pn used (nonce reuse)"),
    m("s4-pn-reset-at-key-update", "4-6", "core/session.py",
      "            keys.update(now)\n            self.stats.key_updates_send += 1\n",
      "            keys.update(now)\n            self.stats.key_updates_send += 1\n"
      "            pn = self.pn_next = cfg.initial_pn  # mutant\n",
      "packet numbers restart under each new key"),
    m("s4-pn-limit-ignored", "4-6", "core/session.py",
      "        if pn >= cfg.pn_limit - 1:\n", "        if False:\n",
      "the sender goes past PN_LIMIT instead of closing with KEY_EXHAUSTED"),
    m("s4-pn-not-recovered", "4-6", "core/wire.py",
      "    expected = largest + 1\n", "    return seq  # mutant\n    expected = largest + 1\n",
      "the 32-bit seq is taken as the packet number (no 64-bit recovery)"),
    m("s4-key-moves-on-forgery", "4-6", "core/endpoint.py", _FAILED_AEAD,
      _after_failed_aead("keys.commit_update(pn, now, 3 * session.rtt.rto) "
                         "if key_phase != keys.phase else None"),
      "a forged packet of the other phase completes a key update"),
    m("s4-forgery-moves-address", "4-6", "core/endpoint.py", _FAILED_AEAD,
      _after_failed_aead("session.addr = addr"),
      "a packet that failed the AEAD moves the session to its source address"),
    m("s4-forgery-keeps-alive", "4-6", "core/endpoint.py", _FAILED_AEAD,
      _after_failed_aead("session.last_recv_at = now"),
      "a packet that failed the AEAD resets the idle timer"),
    m("s4-forgery-strikes", "4-6/10", "core/endpoint.py", _FAILED_AEAD,
      _after_failed_aead("session.strike(now)"),
      "a packet that failed the AEAD earns a strike (the reference defect)"),
    m("s4-prev-key-never-erased", "4-6", "core/aead.py",
      "            self._prev = None\n            self.prev_expires_at = None\n",
      "            self.prev_expires_at = None\n",
      "the previous receive key is kept for ever"),
    m("s4-prev-key-expiry-not-checked-on-receive", "4-6", "core/endpoint.py",
      "        if keys.prev_expires_at is not None and now >= keys.prev_expires_at:\n"
      "            keys.expire_previous(now)\n", "",
      "an expired previous key still opens packets until the timer runs"),
    m("s4-prev-key-for-any-pn", "4-6", "core/aead.py",
      "elif self._prev is not None and pn < self.first_pn_current:",
      "elif self._prev is not None:",
      "the previous key opens other-phase packets whatever their pn"),
    m("s4-no-update-by-packets", "4-6", "core/aead.py",
      "return self.packets_under_key >= max_packets or now - self.key_started_at >= max_age",
      "return now - self.key_started_at >= max_age",
      "no key update after KEY_UPDATE_PACKETS"),
    m("s4-no-update-by-time", "4-6", "core/aead.py",
      "return self.packets_under_key >= max_packets or now - self.key_started_at >= max_age",
      "return self.packets_under_key >= max_packets",
      "no key update after KEY_UPDATE_TIME"),
    m("s4-no-update-min-interval", "4-6", "core/aead.py",
      "if self.updated_at is not None and now - self.updated_at < min_interval:",
      "if False:",
      "keys may update twice within KEY_UPDATE_MIN_INTERVAL"),
    m("s4-catch-up-always", "4-6", "core/endpoint.py",
      "        catch_up = (cfg.key_update_catch_up\n"
      "                    if now - session.last_recv_at >= cfg.key_update_min_interval"
      " else 0)\n",
      "        catch_up = cfg.key_update_catch_up  # mutant\n",
      "keys beyond the next are tried on every packet, not only after a silence"),
    m("s4-roam-on-any-packet", "4-6", "core/endpoint.py",
      "            if newest:\n                self._new_path(",
      "            if True:\n                self._new_path(",
      "a reordered or replayed older packet moves the peer"),
    m("s4-path-unvalidated", "6/8", "core/endpoint.py",
      "        session.path_budget = 3 * size\n", "        session.path_budget = None\n",
      "a new address gets everything at once, before it proved it reaches the peer "
      "(a raced packet aims the session's traffic at a victim: issue 9 item 6)"),
    m("s4-path-validated-by-any-packet", "6/8", "core/endpoint.py",
      "        if (session.path_budget is not None and ptype == _ACK and addr == session.addr\n"
      "                and session.peer_largest_pn >= session.path_probe_pn):",
      "        if session.path_budget is not None and addr == session.addr:",
      "any packet from the new address validates it, not an ACK of a pn sent there"),
    m("s4-zero-length-message", "4-6", "core/session.py",
      "if length == 0 or off + length > n:", "if off + length > n:",
      "a message length of 0 is not a violation"),

    # -------------------------------------------------------------- section 7: handshake
    m("s5-cookie-not-verified", "7", "core/cookie.py",
      "        return ok or ok_prev\n", "        return True\n",
      "any cookie verifies"),
    m("s5-cookie-ignores-port", "7", "core/cookie.py",
      "hmac.new(self._secret(n), addr_bytes, hashlib.sha256)",
      "hmac.new(self._secret(n), addr_bytes[:-2], hashlib.sha256)",
      "the cookie binds the IP address only"),
    m("s5-cookie-ignores-ip", "7", "core/cookie.py",
      "hmac.new(self._secret(n), addr_bytes, hashlib.sha256)",
      "hmac.new(self._secret(n), addr_bytes[-2:], hashlib.sha256)",
      "the cookie binds the port only"),
    m("s5-cookie-previous-epoch-refused", "7", "core/cookie.py",
      "        return ok or ok_prev\n", "        return ok\n",
      "a cookie of the previous epoch is refused"),
    m("s5-cookie-old-epochs-accepted", "7", "core/cookie.py",
      "ok_prev = hmac.compare_digest(cookie, self.make_for_epoch(addr_bytes, n - 1))",
      "ok_prev = any(hmac.compare_digest(cookie, self.make_for_epoch(addr_bytes, n - k))"
      " for k in (1, 2, 3))",
      "cookies of epochs n-2 and n-3 verify too"),
    m("s5-cookie-never-rotates", "7", "core/cookie.py",
      "_LABEL + _U64.pack(n & 0xFFFFFFFFFFFFFFFF)", "_LABEL",
      "the cookie secret does not depend on the epoch"),
    m("s5-cookie-public-secret", "7", "core/cookie.py",
      "secret = hmac.new(self._master,", "secret = hmac.new(bytes(32),",
      "the cookie secret is a public constant (the reference defect)"),
    m("s5-cookie-compare-eq", "7", "core/cookie.py",
      "ok = hmac.compare_digest(cookie, self.make_for_epoch(addr_bytes, n))",
      "ok = cookie == self.make_for_epoch(addr_bytes, n)",
      "the cookie is compared with == (not constant time)"),
    m("s5-state-before-cookie", "7", "core/endpoint.py",
      "            stats.cookie_replies += 1\n",
      "            stats.cookie_replies += 1\n"
      "            self._pending_per_ip.setdefault(addr[0], 0)  # mutant\n",
      "a cookie-less HELLO leaves an entry per source"),
    m("s5-dh-before-cookie", "7", "core/endpoint.py",
      "        # 2. stateless cookie check: no state at all before the address is proven\n",
      "        ResponderHandshake.create(self._static, self._rng(KEY_LEN), body.noise)"
      "  # mutant\n",
      "the responder does its Noise work (DH) before the cookie is checked"),
    m("s5-repeated-hello-new-pending", "7", "core/endpoint.py",
      "existing = self._pending_hello.get(hello_key)", "existing = None",
      "a repeated HELLO opens a second pending handshake"),
    m("s5-no-max-connections", "7", "core/endpoint.py",
      "if (len(self.sessions) >= cfg.max_connections", "if (False",
      "MAX_CONNECTIONS does not stop a HELLO"),
    m("s5-no-global-hs-limit", "7", "core/endpoint.py",
      "        if self._pending_count >= cfg.max_handshakes_in_flight:\n",
      "        if False:\n",
      "no MAX_HANDSHAKES_IN_FLIGHT"),
    m("s5-full-table-refuses", "7", "core/endpoint.py",
      "            stats.handshakes_rejected += 1\n            self._remove(oldest)\n",
      "            stats.handshakes_rejected += 1\n            return  # mutant\n",
      "a full pending table refuses newcomers instead of evicting its oldest (issue 9 item 3)"),
    m("s5-ipv6-per-address", "7", "core/endpoint.py",
      "        if len(ip) != 16 or ip.startswith(_V4_MAPPED):\n",
      "        if True:  # mutant\n",
      "MAX_HANDSHAKES_PER_IP counts each IPv6 address, not each /64 (issue 9 item 3)"),
    m("s5-no-per-ip-limit", "7", "core/endpoint.py",
      "                or self._pending_per_ip.get(ip, 0) >= cfg.max_handshakes_per_ip):",
      "                ):",
      "no MAX_HANDSHAKES_PER_IP"),
    m("s5-per-ip-counts-all", "7", "core/endpoint.py",
      "self._pending_per_ip.get(ip, 0) >= cfg.max_handshakes_per_ip",
      "self._pending_count >= cfg.max_handshakes_per_ip",
      "the per-IP limit counts every pending handshake (the reference defect)"),
    m("s5-pending-outlives-timeout", "7", "core/endpoint.py",
      "        session.pending = True\n",
      "        session.pending = True\n        session.hs_deadline_at += 60.0  # mutant\n",
      "a pending handshake lives HANDSHAKE_TIMEOUT + 60 s"),
    m("s5-low-order-point", "7", "core/endpoint.py",
      "if body.noise in LOW_ORDER_POINTS:", "if False:",
      "a HELLO with a low-order ephemeral key gets DH work and a pending slot"),
    m("s5-hello-unpadded", "7/10", "core/wire.py",
      "    if header.payload_len != HS_BODY_LEN[kind]:\n",
      "    if header.payload_len != HS_BODY_LEN[kind] and not (\n"
      "            kind is HsKind.HELLO and header.payload_len >= 53):  # mutant\n",
      "a HELLO without its padding is accepted, so the RESPONSE is larger than it"),
    m("s5-hello-sender-id-zero", "7", "core/wire.py",
      "if header.conn_id != 0 or sender_id == 0:", "if header.conn_id != 0:",
      "a HELLO with sender_id 0 is accepted"),
    m("s5-conn-id-not-unique", "7", "core/endpoint.py",
      "if conn_id and conn_id not in self.sessions:", "if conn_id:",
      "a new conn_id may collide with a live session's"),
    m("s5-finish-no-precheck", "7", "core/endpoint.py",
      "        if not hs.could_be_genuine(body.noise):\n", "        if False:\n",
      "every forged FINISH costs the responder a Noise read (issue 9 item 2a)"),
    m("s5-finish-lockout", "7", "core/endpoint.py",
      "        result = hs.consume_finish(body.noise)\n        if result is None:\n",
      "        if now < session.finish_retry_at:  # mutant: the old lockout\n"
      "            stats.packets_dropped_crypto += 1\n            return\n"
      "        if not hs.could_be_genuine(body.noise[:48] + bytes(16)):\n"
      "            session.finish_retry_at = now + 0.125\n"
      "        result = hs.consume_finish(body.noise)\n        if result is None:\n",
      "a forged FINISH locks the pending handshake for 125 ms, genuine FINISH included"),
    m("s5-refused-response-ends-handshake", "7", "core/endpoint.py",
      "            guard.refused = True\n            stats.handshakes_rejected += 1\n"
      "            return\n",
      "            guard.refused = True\n            stats.handshakes_rejected += 1\n"
      "            self._remove(session)  # mutant\n"
      "            self._events.append(HandshakeFailed(session.conn_id, addr, "
      "\"authentication\"))\n            return\n",
      "one RESPONSE with a refused key ends the handshake (issue 9 item 2c)"),
    m("s5-response-reads-unbudgeted", "7", "core/endpoint.py",
      "        if not guard.attempts.ready(now):\n", "        if False:\n",
      "every forged RESPONSE costs the initiator a Noise read, without limit"),
    m("s5-cookie-single-candidate", "7", "core/endpoint.py",
      "        guard.see_cookie(bytes(body.cookie), cfg.cookie_candidates, self._rng)\n",
      "        guard.cookies.clear()  # mutant: only the newest cookie is kept\n"
      "        guard.see_cookie(bytes(body.cookie), cfg.cookie_candidates, self._rng)\n",
      "the initiator keeps one cookie, the newest: a forged flood always wins it"),
    m("s5-dup-finish-any-address", "7", "core/endpoint.py",
      "            if (session.finish_body and addr == session.addr\n",
      "            if (session.finish_body\n",
      "a replayed FINISH from another address is answered with an ACK"),
    m("s5-dup-finish-forever", "7", "core/endpoint.py",
      "                    and now < session.finish_answer_until\n", "",
      "a replayed FINISH is answered after the handshake timeout"),
    m("s5-dup-finish-every-time", "7", "core/endpoint.py",
      "                    and now >= session.finish_answered_at + session.rtt.rto\n", "",
      "every replayed FINISH is answered (no once-per-RTO pacing)"),
    m("s5-dup-finish-not-compared", "7", "core/endpoint.py",
      "                    and hmac.compare_digest(data, session.finish_body)):",
      "                    ):",
      "any FINISH-shaped datagram for a live session is answered"),
    m("s5-dup-finish-compare-eq", "7", "core/endpoint.py",
      "                    and hmac.compare_digest(data, session.finish_body)):",
      "                    and data == session.finish_body):",
      "the duplicate FINISH is compared with =="),
    m("s5-cookie-reply-any-address", "7", "core/endpoint.py",
      "                or addr != session.addr or body.cookie == _NO_COOKIE\n",
      "                or body.cookie == _NO_COOKIE  # mutant\n",
      "the initiator takes a COOKIE from any address"),
    m("s5-cookie-reply-unpaced", "7", "core/endpoint.py",
      "if now < session.cookie_taken_at + session.hs_rto or best == guard.sent_with:",
      "if best == guard.sent_with:",
      "the initiator takes any number of COOKIEs per RTO"),
    m("s5-old-session-not-replaced", "7", "core/endpoint.py",
      "                old.close(CloseReason.REPLACED, now)\n                self._remove(old)\n",
      "                pass  # mutant\n",
      "a second session with the same static key leaves the old one open"),

    m("t-reconnect-not-pinned", "9", "aio/transport.py",
      "peer._server_key = key if key is not None else peer.public_key.to_bytes()",
      "peer._server_key = key",
      "an unpinned reconnecting Peer takes whatever key answers later (issue 9 item 7)"),
    m("t-rejected-ends-peer", "9", "aio/transport.py",
      "                self._post(PeerEvent(\"rejected\", peer))\n",
      "                peer._reconnecting = None  # mutant: the old end of the Peer\n"
      "                self._finish_peer(peer, CloseReason.NORMAL, False)\n"
      "                return\n",
      "one wrong-key answer ends a reconnecting Peer for good (issue 9 items 2c, 7)"),

    m("w-short-datagram-unchecked", "7", "workers.py",
      "        (_LD_W_LEN, 0, 0, 0),\n"
      "        (_JGE_K, 0, 4, CONN_ID_OFFSET + 4),  # shorter than 8 bytes -> the last "
      "instruction\n", "",
      "datagrams under 8 bytes abort the steering program and all go to worker 0 "
      "(issue 9 item 8)"),

    # --------------------------------------------------------- section 9: authorisation
    m("s7-responder-allow-list-ignored", "9", "core/endpoint.py",
      "        if not self._authorised(result.remote_static, None):\n",
      "        if False:\n",
      "the responder admits initiators that are not on its allow-list"),
    m("s7-allow-list-ignored", "9", "core/endpoint.py",
      "if self.allowed_peers is not None and not any(", "if False and not any(",
      "no allow-list on either side"),
    m("s7-pin-ignored", "9", "core/endpoint.py",
      "if pinned is not None and not hmac.compare_digest(peer_key, pinned):", "if False:",
      "the initiator ignores the pinned responder key"),
    m("s7-pin-compare-eq", "9", "core/endpoint.py",
      "if pinned is not None and not hmac.compare_digest(peer_key, pinned):",
      "if pinned is not None and peer_key != pinned:",
      "the pinned key is compared with !="),
    m("s7-allow-list-compare-eq", "9", "core/endpoint.py",
      "hmac.compare_digest(peer_key, k) for k in self.allowed_peers",
      "peer_key == k for k in self.allowed_peers",
      "allow-list entries are compared with =="),
    m("s7-key-file-world-readable", "9", "keys.py",
      "os.fchmod(fd, 0o600)", "os.fchmod(fd, 0o644)",
      "a private key file is left readable by others"),
    m("s7-key-file-created-0644", "9", "keys.py",
      "os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)",
      "os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)",
      "the key file is created 0644 (then narrowed by the fchmod)",
      survives="equivalent for every observer after save() returns: the fchmod(0600) "
               "that follows runs before any key byte is written; only a reader racing "
               "the microseconds between open and fchmod could tell, which no functional "
               "test can do reliably (kept as defence in depth; checked by review)"),
    m("s7-key-file-overwritten", "9", "keys.py",
      "os.O_WRONLY | os.O_CREAT | os.O_EXCL", "os.O_WRONLY | os.O_CREAT | os.O_TRUNC",
      "saving a key overwrites an existing file (and follows a planted symlink)"),
    m("s7-key-file-no-warning", "9", "keys.py",
      "if mode & (stat.S_IRWXG | stat.S_IRWXO):", "if False:",
      "loading a key file others can read gives no warning"),
    m("s7-private-key-compare-eq", "9", "keys.py",
      "        if not isinstance(other, PrivateKey):\n            return NotImplemented\n"
      "        return hmac.compare_digest(self._raw, other._raw)\n",
      "        if not isinstance(other, PrivateKey):\n            return NotImplemented\n"
      "        return self._raw == other._raw\n",
      "private keys are compared with =="),

    # ------------------------------------------------------------ section 10: defences
    m("s8-violation-no-strike", "10", "core/session.py",
      "        except Violation:\n            self.strike(now)\n",
      "        except Violation:\n            pass\n",
      "an authenticated violation earns no strike"),
    m("s8-strikes-not-counted", "10", "core/session.py",
      "        self.strikes += 1\n", "        self.strikes += 0\n",
      "strikes are counted in the statistics but never add up"),
    m("s8-no-strike-decay", "10", "core/session.py",
      "        if now - self.last_strike_at > cfg.strike_decay:\n            self.strikes = 0\n",
      "",
      "strikes never reset"),
    m("s8-strike-decay-from-first", "10", "core/session.py",
      "        self.last_strike_at = now\n",
      "        self.last_strike_at = now if self.strikes == 1 else self.last_strike_at\n",
      "STRIKE_DECAY is measured from the first strike, not the previous one"),
    m("s8-strike-decay-boundary", "10", "core/session.py",
      "if now - self.last_strike_at > cfg.strike_decay:",
      "if now - self.last_strike_at >= cfg.strike_decay:",
      "a strike exactly STRIKE_DECAY after the previous one resets the count"),
    m("s8-threshold-off-by-one", "10", "core/session.py",
      "if self.strikes >= cfg.strike_threshold:", "if self.strikes > cfg.strike_threshold:",
      "the session closes one strike late"),
    m("s8-threshold-never-closes", "10", "core/session.py",
      "        if self.strikes >= cfg.strike_threshold:\n"
      "            self.close(CloseReason.PROTOCOL_VIOLATION, now)\n",
      "        if self.strikes >= cfg.strike_threshold:\n            pass\n",
      "STRIKE_THRESHOLD does not close the session"),
    m("s8-threshold-closes-silently", "10", "core/session.py",
      "        if self.strikes >= cfg.strike_threshold:\n"
      "            self.close(CloseReason.PROTOCOL_VIOLATION, now)\n",
      "        if self.strikes >= cfg.strike_threshold:\n"
      "            self.close(CloseReason.PROTOCOL_VIOLATION, now, send=False)\n",
      "the session closes at the threshold without sending CLOSE"),
    m("s8-no-message-cost", "10", "core/endpoint.py",
      "            bucket.tokens -= extra * self.config.message_cost\n",
      "            pass  # mutant\n",
      "a packet of 256 tiny messages costs one token, like a packet of one (issue 9 item 1)"),
    m("s8-bucket-burst-unbounded", "10", "core/ratelimit.py",
      "self.tokens = min(self.tokens + elapsed * self.rate, self.burst)",
      "self.tokens = self.tokens + elapsed * self.rate",
      "tokens accumulate beyond RATE_LIMIT_BURST while idle"),
    m("s8-reorder-buffer-unbounded", "8/10", "core/reliable.py",
      "if self.buffered_bytes + len(data) > self.max_bytes:", "if False:",
      "the reorder buffer has no byte limit"),
    m("s8-rseq-beyond-edge-unchecked", "8/10", "core/reliable.py",
      "        if serial_gt(last, self.edge):\n            raise Violation(",
      "        if False:\n            raise Violation(",
      "rseq beyond the advertised credit edge is not a violation (v1: the window)"),
    m("s8-ack-of-never-sent", "8/10", "core/reliable.py",
      "        if serial_gt(rseq, last):\n", "        if False:\n",
      "an ack or SACK bit for an rseq never sent is not a violation"),
    m("s8-sack-beyond-sent", "8/10", "core/reliable.py",
      "        if bitmap:\n            self._check_sent((ack + 1 + bitmap.bit_length()) & _MASK)\n",
      "",
      "a SACK bit beyond what was sent is not a violation"),

    # ------------------- sections 4 and 6, version 2: pn acknowledgements and credit
    m("s4-ack-largest-never-sent", "4-6/10", "core/recovery.py",
      "        if largest >= pn_next:\n", "        if False:\n",
      "an ACK's largest_pn beyond the last pn sent is not a violation"),
    m("s4-ack-bitmap-below-pn-1", "4-6/10", "core/recovery.py",
      "        if bitmap >> max(largest - 1, 0):\n", "        if False:\n",
      "a pn_bitmap bit naming a pn below 1 is not a violation"),
    m("s4-ack-bitmap-without-largest", "4-6/10", "core/recovery.py",
      "            if bitmap:\n                raise Violation(",
      "            if False:\n                raise Violation(",
      "a pn_bitmap with largest_pn 0 is not a violation"),
    m("s4-optimistic-ack-accepted", "4-6/10", "core/recovery.py",
      "        for pn in self.skipped:\n", "        for pn in ():\n",
      "an ACK naming a skipped pn (an optimistic ACK) is not a violation"),
    m("s4-no-pn-skipping", "4-6", "core/session.py",
      "        if self.skip_at == 0 and self.rng is not None:\n", "        if False:\n",
      "the sender never skips a pn, so optimistic ACKs go unnoticed"),
    m("s4-ack-state-before-checks", "4-6/10", "core/session.py",
      "        window.check_ack(ack, rseq_bits)\n",
      "        window.apply_credit(ack, credit)  # mutant: before the checks\n"
      "        window.check_ack(ack, rseq_bits)\n",
      "a violating ACK's credit is taken before the ACK is refused"),
    m("s6-sender-ignores-credit", "8", "core/reliable.py",
      "        return min(self.limit - len(self.outstanding), self.credit)\n",
      "        return self.limit - len(self.outstanding)\n",
      "the sender sends RELIABLE beyond the peer's credit edge"),
    m("s6-lower-edge-shrinks-limit", "8", "core/reliable.py",
      "        if serial_gt(edge, self.edge):\n            self.edge = edge\n",
      "        if edge != self.edge:\n            self.edge = edge\n",
      "an ACK with a lower edge shrinks the sender's limit"),
    m("s6-receiver-edge-moves-back", "8", "core/reliable.py",
      "        if serial_gt(proposed, self.edge):\n            self.edge = proposed\n",
      "        self.edge = proposed\n",
      "the receiver's advertised edge moves back when its buffer fills",
      survives="equivalent under the session's accounting: a message is at most "
               "max_message_size < max_datagram bytes, so the ack it advances always "
               "frees at least the room it takes and the proposed edge never falls; the "
               "rule guards the arithmetic, and tests/test_reliable.py::"
               "test_edge_never_moves_backwards checks it on the window directly"),
    m("s6-no-reservation", "8", "core/reliable.py",
      "        n = (room // self.reserve if room > 0 else 0) + len(self.buffer)\n",
      "        n = (room // 16 if room > 0 else 0) + len(self.buffer)\n",
      "credit reserves 16 bytes per message, not max_datagram: unread data overflows"),
    m("s6-unread-not-counted", "8", "core/session.py",
      "            window.unread_bytes += sum(map(len, ready))\n", "",
      "delivered but unread messages do not count against the credit"),
    m("s6-no-endpoint-budget", "8", "core/session.py",
      "            credit = window.advertise(cap)\n", "            credit = window.advertise()\n",
      "every session gets its full MAX_REORDER_BUFFER of credit whatever the others hold "
      "(2.4 GiB at 10,000 parking sessions: issue 9 item 5)"),
    m("s6-no-credit-floor", "8", "core/session.py",
      "            cap = max(budget.limit - budget.reserved + self.reserved, budget.floor)\n",
      "            cap = budget.limit - budget.reserved + self.reserved\n",
      "a session opened while others hold the whole budget gets no credit at all"),
    m("s6-gap-never-closes", "8", "core/session.py",
      "        if gap is not None and now >= gap + cfg.max_retransmissions * cfg.max_rto:\n",
      "        if False:\n",
      "a reliable gap held open for ever closes nothing"),
    m("s8-no-idle-timeout", "10", "core/session.py",
      "self.idle_limit = config.idle_timeout  #", "self.idle_limit = config.idle_timeout * 1000  #",
      "a silent session lives 1000 x IDLE_TIMEOUT"),

    # ------------------------------------ section 2: the defaults of the defences' limits
    *(m(f"s2-default-{field.replace('_', '-')}", section, "config.py",
        f"{field}: {kind} = {old}\n", f"{field}: {kind} = {new}  # mutant\n",
        f"default {field} {old} -> {new} (weaker)")
      for field, kind, old, new, section in (
          ("max_connections", "int", "10_000", "1_000_000", "2/7"),
          ("max_handshakes_in_flight", "int", "100", "10_000", "2/7"),
          ("max_handshakes_per_ip", "int", "5", "100", "2/7"),
          ("handshake_timeout", "float", "5.0", "60.0", "2/10"),
          ("idle_timeout", "float", "60.0", "3600.0", "2/10"),
          ("rate_limit_pps", "float", "10_000.0", "1_000_000.0", "2/10"),
          ("rate_limit_burst", "float", "500.0", "50_000.0", "2/10"),
          ("strike_threshold", "int", "10", "100", "2/10"),
          ("strike_decay", "float", "5.0", "0.5", "2/10"),
          ("max_reliable_in_flight", "int", "256", "65_536", "2/8"),
          ("max_reorder_buffer", "int", "1_310_720", "1 << 30", "2/8"),
          ("replay_window", "int", "1024", "64", "2/4-6"),  # the reference design's cap
          ("cookie_rotation", "float", "120.0", "86_400.0", "2/7"),
          ("require_cookie", "bool", "True", "False", "7"),
          ("key_update_packets", "int", "1 << 24", "1 << 40", "2/4-6"),
          ("key_update_time", "float", "120.0", "86_400.0", "2/4-6"),
          ("pn_limit", "int", "1 << 62", "1 << 64", "2/4-6"),
      )),
)

SPECIAL: Final = frozenset({"canary"})


# ------------------------------------------------------------------ machinery


class StaleMutation(Exception):
    """An old text is not found exactly once: the list must follow the source."""


def check(mutation: Mutation) -> str:
    """The mutated text of ``mutation.file``.

    Raises:
        StaleMutation: an old text is not found exactly once, or the result does
            not compile.
    """
    path = PACKAGE / mutation.file
    if not path.is_file():
        raise StaleMutation(f"{mutation.name}: {path} does not exist")
    text = path.read_text(encoding="utf-8")
    for old, new in mutation.edits:
        count = text.count(old)
        if count != 1:
            raise StaleMutation(f"{mutation.name}: old text found {count} times in "
                                f"src/intentra/{mutation.file} (must be exactly once):\n{old}")
        text = text.replace(old, new)
    try:  # a mutant that does not even compile would be "killed" for nothing
        compile(text, str(path), "exec")
    except SyntaxError as exc:
        raise StaleMutation(f"{mutation.name}: the mutated file does not compile: {exc}"
                            ) from exc
    return text


@dataclass
class Result:
    name: str
    section: str
    red: bool
    first_failure: str
    seconds: float
    expected_survivor: bool


_FIRST_FAILURE: Final = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)


def first_failure(output: str, returncode: int) -> str:
    found = _FIRST_FAILURE.search(output)
    if found:
        return found.group(1)
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return f"pytest exit {returncode}: {lines[-1] if lines else 'no output'}"


def run_one(mutation: Mutation | None, timeout: float, ignore: tuple[str, ...] = ()) -> Result:
    """Copy src/, apply ``mutation`` (None: the unmutated baseline), run the suite."""
    name = mutation.name if mutation is not None else "baseline"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"intentra-mut-{name}-") as tmp:
        copy = Path(tmp) / "src"
        shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        if mutation is not None:
            (copy / "intentra" / mutation.file).write_text(check(mutation), encoding="utf-8")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(copy)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["HYPOTHESIS_STORAGE_DIRECTORY"] = str(Path(tmp) / "hypothesis")
        # The mutations edit the Python reference; endpoints of the suite run it
        # (the native datapath, tested against it by test_native_differential,
        # would otherwise carry the unmutated defences).
        env["INTENTRA_NATIVE"] = "0"
        # The mutant must shadow the editable install, in exactly this environment.
        probe = subprocess.run(
            [sys.executable, "-c", "import intentra; print(intentra.__file__)"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
        imported = Path(probe.stdout.strip() or "?").resolve()
        if not imported.is_relative_to(copy.resolve()):
            raise RuntimeError(f"{name}: intentra imported from {imported}, not from {copy} "
                               f"({probe.stderr.strip()})")
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *TESTS,
               *(f"--ignore={path}" for path in ignore)]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return Result(name, mutation.section if mutation else "-", True,
                          f"timeout after {timeout:.0f} s", time.monotonic() - started,
                          bool(mutation and mutation.survives))
    red = proc.returncode != 0
    return Result(name, mutation.section if mutation else "-", red,
                  first_failure(proc.stdout + proc.stderr, proc.returncode) if red else "",
                  time.monotonic() - started, bool(mutation and mutation.survives))


def verdict(result: Result) -> tuple[str, bool]:
    """(the table's result column, whether this result is acceptable)."""
    if result.name == "baseline":
        return ("green" if not result.red else "RED (baseline must pass)"), not result.red
    if result.name in SPECIAL:
        return ("red" if result.red else "GREEN (canary must fail)"), result.red
    if result.expected_survivor:
        return (("green (expected survivor)", True) if not result.red
                else ("red (expected survivor killed: update its entry)", False))
    return ("red", True) if result.red else ("GREEN (survived)", False)


def print_table(results: list[Result]) -> None:
    rows = [("mutation", "section", "result", "first failing test", "s")]
    for r in results:
        rows.append((r.name, r.section, verdict(r)[0], r.first_failure or "-",
                     f"{r.seconds:.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for i, row in enumerate(rows):
        print(" | ".join(cell.ljust(widths[k]) for k, cell in enumerate(row[:4]))
              + f" | {row[4]:>3}")
        if i == 0:
            print("-+-".join("-" * w for w in widths) + "-+----")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Remove each defence of docs/protocol.md sections 3-10 once and check that "
                    "tests/adversarial + tests/test_hardening.py go red.")
    parser.add_argument("--list", action="store_true",
                        help="list the mutations (and check that each still applies)")
    parser.add_argument("--only", action="append", metavar="NAME", default=[],
                        help="run only this mutation (repeatable)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="pytest runs in parallel (default: CPU count)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds before a mutant's run counts as red (hung)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the unmutated baseline run")
    parser.add_argument("--ignore", action="append", metavar="PATH", default=[],
                        help="leave this test file out (repeatable): which mutants do "
                             "the other tests still kill?")
    args = parser.parse_args(argv)

    by_name = {mu.name: mu for mu in MUTATIONS}
    if len(by_name) != len(MUTATIONS):
        print("duplicate mutation names", file=sys.stderr)
        return 2
    unknown = [n for n in args.only if n not in by_name]
    if unknown:
        print(f"unknown mutation(s): {', '.join(unknown)} (see --list)", file=sys.stderr)
        return 2
    chosen = [by_name[n] for n in args.only] if args.only else list(MUTATIONS)
    stale = []
    for mu in chosen:
        try:
            check(mu)
        except StaleMutation as exc:
            stale.append(str(exc))
    if args.list:
        for mu in chosen:
            tag = " [expected survivor]" if mu.survives else ""
            print(f"{mu.name:45} section {mu.section:5} {mu.file:18} {mu.what}{tag}")
        print(f"{len(chosen)} mutations")
    if stale:
        print("\n".join(["STALE mutation(s): fix the list in " + __file__, *stale]),
              file=sys.stderr)
        return 2
    if args.list:
        return 0

    jobs: list[Mutation | None] = [] if args.no_baseline else [None]
    jobs.extend(chosen)
    started = time.monotonic()
    results: dict[str, Result] = {}
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(run_one, mu, args.timeout, tuple(args.ignore)): mu
                   for mu in jobs}
        for done, future in enumerate(as_completed(futures), 1):
            r = future.result()
            results[r.name] = r
            print(f"[{done}/{len(jobs)}] {r.name}: {verdict(r)[0]} "
                  f"{r.first_failure} ({r.seconds:.0f} s)", flush=True)
    elapsed = time.monotonic() - started
    ordered = [results[mu.name if mu is not None else "baseline"] for mu in jobs]
    print()
    print_table(ordered)
    bad = [r.name for r in ordered if not verdict(r)[1]]
    killed = sum(1 for r in ordered if r.red and r.name not in SPECIAL | {"baseline"})
    survivors = sum(1 for r in ordered if r.expected_survivor and not r.red)
    print(f"\n{len(chosen)} mutations: {killed} killed, {survivors} expected survivors, "
          f"{len(bad)} problems{': ' + ', '.join(bad) if bad else ''}; "
          f"{elapsed:.0f} s with --jobs {args.jobs}")
    if "baseline" in results and results["baseline"].red:
        return 2
    if "canary" in results and not results["canary"].red:
        return 2
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
