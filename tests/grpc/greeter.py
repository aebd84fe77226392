"""A real gRPC client (grpcio) of helloworld.Greeter, for the end-to-end tests.

    python3 greeter.py TARGET METHOD REQUEST_JSON [--timeout S] [--ca FILE]

METHOD is SayHello, SayHelloStream or any other name (an unknown method). Prints one
JSON object: the status code's name, its details, the replies and the metadata.
"""
import argparse
import json
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

PROTO_DIR = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "guests", "grpc-greeter", "proto"
)


def stubs():
    out = tempfile.mkdtemp(prefix="greeter-stubs-")
    code = protoc.main(
        ["protoc", f"-I{PROTO_DIR}", f"--python_out={out}", f"--grpc_python_out={out}",
         os.path.join(PROTO_DIR, "helloworld.proto")]
    )
    if code != 0:
        sys.exit(f"protoc failed: {code}")
    sys.path.insert(0, out)
    import helloworld_pb2  # noqa: E402
    import helloworld_pb2_grpc  # noqa: E402
    return helloworld_pb2, helloworld_pb2_grpc


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("method")
    parser.add_argument("request")
    parser.add_argument("--timeout", type=float)
    parser.add_argument("--ca")
    args = parser.parse_args()
    pb, pb_grpc = stubs()
    if args.ca:
        with open(args.ca, "rb") as f:
            channel = grpc.secure_channel(args.target, grpc.ssl_channel_credentials(f.read()))
    else:
        channel = grpc.insecure_channel(args.target)
    request = pb.HelloRequest(**json.loads(args.request))
    result = {"code": "OK", "details": "", "replies": [], "trailing_metadata": {}}
    try:
        if args.method == "SayHello":
            reply, call = pb_grpc.GreeterStub(channel).SayHello.with_call(
                request, timeout=args.timeout
            )
            result["replies"].append(reply.message)
            result["trailing_metadata"] = dict(call.trailing_metadata() or ())
        elif args.method == "SayHelloStream":
            call = pb_grpc.GreeterStub(channel).SayHelloStream(request, timeout=args.timeout)
            for reply in call:
                result["replies"].append(reply.message)
            result["trailing_metadata"] = dict(call.trailing_metadata() or ())
        else:
            unknown = channel.unary_unary(
                f"/helloworld.Greeter/{args.method}",
                request_serializer=pb.HelloRequest.SerializeToString,
                response_deserializer=pb.HelloReply.FromString,
            )
            unknown(request, timeout=args.timeout)
    except grpc.RpcError as error:
        result["code"] = error.code().name
        result["details"] = error.details() or ""
        result["trailing_metadata"] = dict(error.trailing_metadata() or ())
        result["initial_metadata"] = dict(error.initial_metadata() or ())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
