"""An HTTP/2 client (python-hyper's `h2`) that sends a request body followed by
trailers and prints the response's status, body and trailers as JSON. For the
end-to-end tests: `python3 trailers.py HOST PORT PATH NAME=VALUE...`."""
import json
import socket
import sys

import h2.config
import h2.connection
import h2.events


def main():
    host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    trailers = [tuple(pair.split("=", 1)) for pair in sys.argv[4:]]
    sock = socket.create_connection((host, port), timeout=10)
    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(
        stream,
        [(":method", "POST"), (":path", path), (":scheme", "http"),
         (":authority", f"{host}:{port}"), ("te", "trailers")],
    )
    conn.send_data(stream, b"x" * 1000)
    conn.send_headers(stream, trailers, end_stream=True)
    sock.sendall(conn.data_to_send())
    result = {"status": None, "body": "", "trailers": {}}
    done = False
    while not done:
        data = sock.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                result["status"] = int(dict(event.headers)[":status"])
            elif isinstance(event, h2.events.DataReceived):
                result["body"] += event.data.decode()
                conn.acknowledge_received_data(event.flow_controlled_length, stream)
            elif isinstance(event, h2.events.TrailersReceived):
                result["trailers"] = dict(event.headers)
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                done = True
        sock.sendall(conn.data_to_send())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
