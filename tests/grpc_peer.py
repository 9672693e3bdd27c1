"""A gRPC server and client from Python's grpcio, for tests/grpc.rs.

Generic handlers on raw bytes, so no code is generated:

    python3 tests/grpc_peer.py serve [--until-killed] [--tls CERT KEY]
        prints "port N", then "ended NAME" each time a Wait call ends
        (cancelled by its caller or past its deadline); serves until
        stdin closes, or with --until-killed until it is killed.
    python3 tests/grpc_peer.py call TARGET AUTHORITY CASE... [--ca FILE]
        runs each case against TARGET (host:port) with AUTHORITY as the
        HTTP/2 :authority (the tunnel's name), prints "ok CASE" for each,
        and exits non-zero at the first that fails.
    python3 tests/grpc_peer.py bench TARGET AUTHORITY SECONDS THREADS
        unary calls of 100 bytes for SECONDS on one channel from THREADS
        threads; prints "calls N per_second X" (examples/h2_bench.sh).
"""

import queue
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "droid.test.Echo"
BIG = 50 * 1024 * 1024
LIMITS = [
    ("grpc.max_receive_message_length", BIG + 1024),
    ("grpc.max_send_message_length", BIG + 1024),
]


def unary(request, context):
    meta = dict(context.invocation_metadata())
    context.send_initial_metadata((("x-initial", "i-" + meta.get("x-meta", "")),))
    context.set_trailing_metadata((("x-trailer", "t-" + meta.get("x-meta", "")),))
    return request


def server_stream(request, context):
    for i in range(int(request.decode())):
        yield b"%d" % i


def client_stream(requests, context):
    count = total = 0
    for message in requests:
        count += 1
        total += len(message)
    return b"%d %d" % (count, total)


def bidi(requests, context):
    for message in requests:
        yield message


def fail(request, context):
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad thing: " + request.decode())


def wait(request, context):
    ended = threading.Event()
    context.add_callback(ended.set)
    ended.wait(60)
    print("ended " + request.decode(), flush=True)
    return b""


def serve(until_killed=False, tls=None):
    raw = dict(request_deserializer=None, response_serializer=None)
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, **raw),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream, **raw),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream, **raw),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi, **raw),
        "Fail": grpc.unary_unary_rpc_method_handler(fail, **raw),
        "Wait": grpc.unary_unary_rpc_method_handler(wait, **raw),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64), options=LIMITS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if tls:
        with open(tls[0], "rb") as c, open(tls[1], "rb") as k:
            credentials = grpc.ssl_server_credentials(((k.read(), c.read()),))
        port = server.add_secure_port("127.0.0.1:0", credentials)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("port %d" % port, flush=True)
    if until_killed:
        server.wait_for_termination()
        return
    # Until the test closes stdin (or kills this process by its pid).
    sys.stdin.read()
    server.stop(0)


def method(channel, kind, name):
    return getattr(channel, kind)("/%s/%s" % (SERVICE, name))


def expect(what, got, wanted):
    if got != wanted:
        raise AssertionError("%s: got %r, wanted %r" % (what, got, wanted))


def case_unary(ch):
    call = method(ch, "unary_unary", "Unary")
    reply, info = call.with_call(b"hello", metadata=(("x-meta", "m1"),), timeout=10)
    expect("reply", reply, b"hello")
    expect("initial metadata", dict(info.initial_metadata()).get("x-initial"), "i-m1")
    expect("trailing metadata", dict(info.trailing_metadata()).get("x-trailer"), "t-m1")
    expect("status", info.code(), grpc.StatusCode.OK)


def case_server_stream(ch):
    call = method(ch, "unary_stream", "ServerStream")
    got = [m for m in call(b"10000", timeout=60)]
    expect("messages", len(got), 10000)
    expect("order", got[-1], b"9999")


def case_client_stream(ch):
    call = method(ch, "stream_unary", "ClientStream")
    reply = call(iter([b"x" * 1024] * 1000), timeout=60)
    expect("reply", reply, b"1000 1024000")


def case_bidi(ch):
    call = method(ch, "stream_stream", "Bidi")
    outbox = queue.Queue()

    def requests():
        while True:
            message = outbox.get()
            if message is None:
                return
            yield message

    outbox.put(b"0")
    replies = call(requests(), timeout=60)
    for i, reply in enumerate(replies):
        expect("echo", reply, b"%d" % i)
        # The next ping goes only once this pong came back.
        outbox.put(b"%d" % (i + 1) if i + 1 < 1000 else None)
    expect("round trips", i + 1, 1000)


def case_fail(ch):
    try:
        method(ch, "unary_unary", "Fail")(b"x", timeout=10)
    except grpc.RpcError as e:
        expect("code", e.code(), grpc.StatusCode.INVALID_ARGUMENT)
        expect("message", e.details(), "bad thing: x")
        return
    raise AssertionError("Fail succeeded")


def case_deadline(ch):
    try:
        method(ch, "unary_unary", "Wait")(b"deadline", timeout=0.5)
    except grpc.RpcError as e:
        expect("code", e.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        return
    raise AssertionError("Wait returned before its deadline")


def case_cancel(ch):
    future = method(ch, "unary_unary", "Wait").future(b"cancel", timeout=30)
    time.sleep(0.3)
    expect("cancelled", future.cancel(), True)


def case_concurrent(ch):
    call = method(ch, "unary_unary", "Unary")
    calls = [call.future(b"c%d" % i, timeout=30) for i in range(100)]
    for i, f in enumerate(calls):
        expect("reply %d" % i, f.result(), b"c%d" % i)


def case_big(ch):
    message = bytes(range(256)) * (BIG // 256)
    reply = method(ch, "unary_unary", "Unary")(message, timeout=120)
    expect("50 MiB echoed", reply == message, True)


def case_unavailable(ch):
    try:
        method(ch, "unary_unary", "Unary")(b"x", timeout=10)
    except grpc.RpcError as e:
        expect("code", e.code(), grpc.StatusCode.UNAVAILABLE)
        if "--app-protocol h2c" not in e.details():
            raise AssertionError("message: %r" % e.details())
        return
    raise AssertionError("a gRPC call to an HTTP/1.1 app succeeded")


def call(target, authority, cases, ca):
    options = LIMITS + [("grpc.default_authority", authority)]
    if ca:
        with open(ca, "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        options.append(("grpc.ssl_target_name_override", authority.split(":")[0]))
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    with channel:
        for case in cases:
            globals()["case_" + case](channel)
            print("ok " + case, flush=True)


def bench(target, authority, seconds, threads):
    options = [("grpc.default_authority", authority)]
    with grpc.insecure_channel(target, options=options) as channel:
        call = method(channel, "unary_unary", "Unary")
        call(b"warm", timeout=10)
        message = b"x" * 100
        until = time.monotonic() + seconds
        counts = [0] * threads

        def run(i):
            while time.monotonic() < until:
                call(message, timeout=10)
                counts[i] += 1

        started = time.monotonic()
        workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        took = time.monotonic() - started
        print("calls %d per_second %.0f" % (sum(counts), sum(counts) / took), flush=True)


def main():
    args = sys.argv[1:]
    if args[0] == "serve":
        tls = None
        if "--tls" in args:
            i = args.index("--tls")
            tls = (args[i + 1], args[i + 2])
        serve(until_killed="--until-killed" in args, tls=tls)
        return
    if args[0] == "bench":
        bench(args[1], args[2], float(args[3]), int(args[4]))
        return
    ca = None
    if "--ca" in args:
        i = args.index("--ca")
        ca = args[i + 1]
        del args[i : i + 2]
    call(args[1], args[2], args[3:], ca)


if __name__ == "__main__":
    main()
