"""An external gRPC server (grpcio) of helloworld.Greeter that a guest calls through
the host's caller, for the end-to-end tests. `python3 server.py` prints
`listening PORT`, then serves until killed. What it does depends on the name:

  unavailable-K:ID  UNAVAILABLE for the first K calls with this name, then OK
  invalid:ID        INVALID_ARGUMENT
  internal:ID       INTERNAL
  deadline          OK, the message the deadline it was given, in ms
  count:NAME        OK, the message how many calls named NAME arrived
  anything else     OK, "Hello NAME"
"""
import collections
import os
import sys
import threading
from concurrent import futures

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from greeter import stubs  # noqa: E402

pb, pb_grpc = stubs()
calls = collections.Counter()
lock = threading.Lock()


class Greeter(pb_grpc.GreeterServicer):
    def SayHello(self, request, context):
        name = request.name
        with lock:
            calls[name] += 1
            seen = calls[name]
        if name.startswith("unavailable-"):
            wanted = int(name.split("-", 1)[1].split(":", 1)[0])
            if seen <= wanted:
                context.abort(grpc.StatusCode.UNAVAILABLE, f"not yet ({seen})")
            return pb.HelloReply(message=f"Hello after {seen} attempts")
        if name.startswith("invalid:"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad name")
        if name.startswith("internal:"):
            context.abort(grpc.StatusCode.INTERNAL, "broken")
        if name == "deadline":
            remaining = context.time_remaining()
            text = "none" if remaining is None else str(int(remaining * 1000))
            return pb.HelloReply(message=text)
        if name.startswith("count:"):
            with lock:
                return pb.HelloReply(message=str(calls[name[len("count:"):]]))
        return pb.HelloReply(message=f"Hello {name}")


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_GreeterServicer_to_server(Greeter(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
