#!/usr/bin/env python3
"""Interoperability check with an independent WebSocket implementation.

Run by tests/tests/interop.rs against a live `switchboard serve`. It uses the
PyPI `websockets` library (asyncio client) and builds and checks every frame
by hand from docs/protocol.md; no Rust code is involved on this side. The
envelopes (opaque FlatBuffers made by the Rust builder) arrive as hex in the
JSON spec given as the only argument:

    {"url": "ws://127.0.0.1:PORT/connect",
     "alice": {"user": "...", "token": "..."},
     "bob": {"user": "...", "token": "..."},
     "bad_token": "...",
     "to_bob": ["<hex>", "<hex>", "<hex>"],   # alice -> user:bob
     "to_room": "<hex>",             # alice -> room:interop
     "spoofed": "<hex>"}             # sender bob, sent on alice's connection

Exit status 0 when every check passed; otherwise 1 with the failed check on
stderr.
"""

import asyncio
import json
import struct
import sys

try:
    import websockets
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus
except ImportError as e:  # pragma: no cover - reported to the Rust test
    sys.exit(f"interop.py needs the `websockets` package (scripts/install-test-deps.sh): {e}")

TIMEOUT = 10.0
SUBPROTOCOL = "switchboard.v1"
CHECKS = 0


class CheckFailed(Exception):
    pass


def check(cond, what):
    global CHECKS
    CHECKS += 1
    if not cond:
        raise CheckFailed(what)


# --- frames, from docs/protocol.md section 4 -------------------------------

def send_frame(env: bytes, no_answer: bool = False) -> bytes:
    return (b"\x01\x01\x01\x00" if no_answer else b"\x01\x01\x00\x00") + env


def deliver_frame(env: bytes) -> bytes:
    return b"\x01\x03\x00\x00" + env


def ack_frame(through: int) -> bytes:
    return b"\x01\x04\x00\x00" + struct.pack("<Q", through)


# Protocol 1.1 numbers sends and deliveries implicitly, per connection
# (section 4, "Sequence numbers and answers"): the client counts them.
SENT = {}       # id(ws) -> sequence number of the last send frame written
DELIVERED = {}  # id(ws) -> deliver frames received


async def send(ws, env: bytes, no_answer: bool = False) -> int:
    """Writes a send frame; returns its sequence number."""
    await ws.send(send_frame(env, no_answer))
    SENT[id(ws)] = SENT.get(id(ws), 0) + 1
    return SENT[id(ws)]


def join_frame(request_id: int, room: str) -> bytes:
    return b"\x01\x06\x00\x00" + struct.pack("<I", request_id) + room.encode()


def presence_query(request_id: int, user: str) -> bytes:
    return b"\x01\x09\x00\x00" + struct.pack("<I", request_id) + user.encode()


def ping_frame(nonce: int) -> bytes:
    return b"\x01\x0b\x00\x00" + struct.pack("<Q", nonce)


def envelope_id(env: bytes) -> bytes:
    """The 16-byte id, read through the FlatBuffers layout (section 3/5):
    u32 root table offset at 0, the table starts with an i32 offset back to
    its vtable, vtable slot 0 (at vtable+4) locates the RoutingHeader struct,
    whose first 16 bytes are the id."""
    check(env[4:8] == b"SBv1", "file identifier SBv1")
    (table,) = struct.unpack_from("<I", env, 0)
    (back,) = struct.unpack_from("<i", env, table)
    vtable = table - back
    (header,) = struct.unpack_from("<H", env, vtable + 4)
    start = table + header
    check(start % 8 == 0, "RoutingHeader is 8-aligned")
    return env[start:start + 16]


def check_accepted(frame: bytes, through: int, outcome: int, what: str):
    """An accepted frame with one entry: every unanswered send up to
    `through` had `outcome` (0 delivered, 1 recipient-offline, 3 duplicate)."""
    check(frame[0:4] == b"\x01\x02\x00\x00", f"{what}: accepted header, got {frame[0:4].hex()}")
    check(len(frame) == 16, f"{what}: one 12-byte entry, got {len(frame)} bytes: {frame.hex()}")
    (t,) = struct.unpack_from("<Q", frame, 4)
    check(t == through, f"{what}: entry through send {through}, got {t}")
    check(frame[12] == outcome, f"{what}: outcome {outcome}, got {frame[12]}")
    check(frame[13:16] == b"\x00\x00\x00", f"{what}: reserved bytes are zero")


async def recv_frame(ws, what: str) -> bytes:
    try:
        msg = await asyncio.wait_for(ws.recv(), TIMEOUT)
    except asyncio.TimeoutError:
        raise CheckFailed(f"{what}: nothing received within {TIMEOUT}s")
    check(isinstance(msg, bytes), f"{what}: expected a binary message, got {msg!r}")
    return msg


async def expect_delivery(ws, env: bytes, what: str):
    frame = await recv_frame(ws, what)
    check(frame == deliver_frame(env), f"{what}: deliver frame is 01 03 00 00 + the envelope bytes")
    DELIVERED[id(ws)] = DELIVERED.get(id(ws), 0) + 1
    await ws.send(ack_frame(DELIVERED[id(ws)]))


async def expect_refused(url: str, status: int, code: int, what: str, **kwargs):
    try:
        async with connect(url, open_timeout=TIMEOUT, **kwargs):
            pass
    except InvalidStatus as e:
        check(e.response.status_code == status, f"{what}: HTTP {status}, got {e.response.status_code}")
        body = json.loads(e.response.body)
        check(body["error"]["code"] == code, f"{what}: error code {code}, got {body}")
        return
    raise CheckFailed(f"{what}: the upgrade was accepted")


async def main(spec: dict):
    url = spec["url"]
    alice, bob = spec["alice"], spec["bob"]
    to_bob = [bytes.fromhex(h) for h in spec["to_bob"]]
    to_room = bytes.fromhex(spec["to_room"])
    spoofed = bytes.fromhex(spec["spoofed"])

    # Three ways to present the token (docs/protocol.md section 2).
    b1 = await connect(
        url,
        additional_headers={"Authorization": f"Bearer {bob['token']}"},
        subprotocols=[SUBPROTOCOL],
        open_timeout=TIMEOUT,
    )
    a = await connect(url, subprotocols=[SUBPROTOCOL, "bearer." + alice["token"]], open_timeout=TIMEOUT)
    b2 = await connect(f"{url}?token={bob['token']}", subprotocols=[SUBPROTOCOL], open_timeout=TIMEOUT)
    for ws, name in [(b1, "Authorization"), (a, "bearer subprotocol"), (b2, "?token=")]:
        check(ws.subprotocol == SUBPROTOCOL, f"{name}: server selected {SUBPROTOCOL}, got {ws.subprotocol}")

    # Wait (with a deadline) until both of bob's connections are registered.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    request_id = 100
    while True:
        request_id += 1
        await a.send(presence_query(request_id, bob["user"]))
        r = await recv_frame(a, "presence-result")
        check(r[0:4] == b"\x01\x0a\x00\x00", f"presence-result header, got {r[0:4].hex()}")
        rid, conns = struct.unpack_from("<II", r, 4)
        check(rid == request_id, "presence-result echoes the request id")
        check(r[12:] == bob["user"].encode(), "presence-result names the user")
        if conns == 2:
            break
        check(loop.time() < deadline, f"bob has 2 connections (has {conns})")
        await asyncio.sleep(0.01)  # poll interval

    # 1:1 to both devices, byte for byte; both acknowledge.
    env = to_bob[0]
    seq = await send(a, env)
    check_accepted(await recv_frame(a, "accepted"), seq, 0, "alice -> bob")
    await expect_delivery(b1, env, "bob device 1")
    await expect_delivery(b2, env, "bob device 2")

    # Protocol ping and WebSocket ping.
    await b2.send(ping_frame(0x0123456789ABCDEF))
    pong = await recv_frame(b2, "pong")
    check(pong == bytes.fromhex("010c0000efcdab8967452301"), f"pong echoes the nonce, got {pong.hex()}")
    await asyncio.wait_for(await b2.ping(b"sb"), TIMEOUT)

    # Rooms.
    for ws, rid in [(a, 7), (b1, 8)]:
        await ws.send(join_frame(rid, "interop"))
        done = await recv_frame(ws, "done")
        check(done == b"\x01\x08\x00\x00" + struct.pack("<I", rid), f"done for request {rid}, got {done.hex()}")
    seq = await send(a, to_room)
    check_accepted(await recv_frame(a, "accepted"), seq, 0, "alice -> room:interop")
    await expect_delivery(b1, to_room, "bob in the room")

    # A spoofed sender: error sender-mismatch (204) naming the envelope.
    spoofed_seq = await send(a, spoofed)
    err = await recv_frame(a, "error")
    check(err[0:4] == b"\x01\x05\x05\x00", f"error header with envelope-id and sequence flags, got {err[0:4].hex()}")
    (code,) = struct.unpack_from("<H", err, 4)
    check(code == 204, f"sender-mismatch is 204, got {code}")
    check(err[6:12] == b"\x00" * 6, "reserved bytes and request id are zero")
    (err_seq,) = struct.unpack_from("<Q", err, 12)
    check(err_seq == spoofed_seq, f"the error names send {spoofed_seq}, got {err_seq}")
    check(err[20:36] == envelope_id(spoofed), "the error names the spoofed envelope")
    err[36:].decode("utf-8")

    # A text message closes that connection with 1003; the others go on.
    # A closing error is sent as an error frame (unsupported-data, 104),
    # then the close (section 6).
    await b2.send("text is not the protocol")
    err = await recv_frame(b2, "unsupported-data error")
    (code,) = struct.unpack_from("<H", err, 4)
    check(err[0:2] == b"\x01\x05" and code == 104, f"error 104 before the close, got {err.hex()}")
    try:
        await asyncio.wait_for(b2.recv(), TIMEOUT)
        raise CheckFailed("a text message did not close the connection")
    except ConnectionClosed as e:
        check(e.rcvd is not None and e.rcvd.code == 1003, f"close code 1003, got {e.rcvd}")

    # Refused upgrades: 401 with the JSON error body.
    await expect_refused(url, 401, 300, "no token", subprotocols=[SUBPROTOCOL])
    await expect_refused(
        url, 401, 301, "bad token",
        additional_headers={"Authorization": f"Bearer {spec['bad_token']}"},
        subprotocols=[SUBPROTOCOL],
    )

    # Still serving: the second envelope reaches bob's remaining device.
    # A no-answer send gets nothing back; the next answered send's entry
    # covers both sequence numbers (the refused spoofed send was answered
    # by its error, so the entry after it skips it too).
    env = to_bob[1]
    await send(a, to_bob[2], no_answer=True)
    await expect_delivery(b1, to_bob[2], "bob device 1 (no-answer send)")
    seq = await send(a, env)
    check_accepted(await recv_frame(a, "accepted"), seq, 0, "alice -> bob after the errors")
    await expect_delivery(b1, env, "bob device 1")
    # The same envelope again: duplicate, not delivered again.
    seq = await send(a, env)
    check_accepted(await recv_frame(a, "accepted"), seq, 3, "alice -> bob, repeated")

    for ws in (a, b1):
        await ws.close()
        check(ws.close_code == 1000, f"normal closure, got {ws.close_code}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: interop.py '<json spec>'")
    try:
        asyncio.run(asyncio.wait_for(main(json.loads(sys.argv[1])), 60))
    except CheckFailed as e:
        print(f"interop: FAILED after {CHECKS} checks: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"interop: ok, {CHECKS} checks, websockets {websockets.__version__}")
