"""A Cohort worker in Python with plain grpcio.

    pip install grpcio grpcio-tools
    COHORT_MASTER=10.0.0.1:7420 COHORT_TOKEN=... COHORT_NAME=py-1 python worker.py

It generates its stubs from the project's .proto at start (grpc_tools),
joins as a worker with the bearer token, reports ready, heartbeats at the
interval the master asks for, answers `add` requests ({"a": 1, "b": 2} →
{"sum": 3}), and logs every other message ("GOT action data FROM sender").
It reconnects with backoff when the master goes away, and when it goes
silent: no welcome within 15 s of joining, or nothing at all (the master
acks heartbeats) for the welcome's dead_after, as from a stopped or hung
master whose connection stays open.

With several masters (COHORT_MASTER=a:7420,b:7420,c:7420, [ha]) it joins
the leader: a standby answers UNAVAILABLE with the leader's address in the
`cohort-leader` metadata, which it follows at once; when a master fails it
tries the next one, backing off only after all failed; it never accepts a
welcome whose term is below one it has seen, and leaves a master silent
for the welcome's suspect_after (not dead_after).
"""

import json
import os
import queue
import random
import sys
import tempfile
import threading
import time

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.environ.get("COHORT_PROTO_DIR", os.path.join(HERE, "..", "..", "proto", "proto"))


def load_stubs():
    out = tempfile.mkdtemp(prefix="cohort-stubs-")
    args = ["protoc", "-I", PROTO_DIR, "-I", os.path.join(os.path.dirname(protoc.__file__), "_proto"),
            f"--python_out={out}", f"--grpc_python_out={out}",
            os.path.join(PROTO_DIR, "cohort", "v1", "cohort.proto")]
    if protoc.main(args) != 0:
        sys.exit("cannot generate stubs from " + PROTO_DIR)
    sys.path.insert(0, out)
    from cohort.v1 import cohort_pb2, cohort_pb2_grpc
    return cohort_pb2, cohort_pb2_grpc


pb, rpc = load_stubs()
MASTERS = [m.strip().removeprefix("http://") for m in
           os.environ.get("COHORT_MASTER", "127.0.0.1:7420").split(",") if m.strip()]
NAME = os.environ.get("COHORT_NAME", "")
TOKEN = os.environ.get("COHORT_TOKEN", "")
if not TOKEN and os.environ.get("COHORT_TOKEN_FILE"):
    with open(os.environ["COHORT_TOKEN_FILE"]) as f:
        TOKEN = f.readline().strip()


# How long a join may wait for its welcome (the master may hold a join up to
# 10 s for its turn).
WELCOME_TIMEOUT = 15.0


def log(*parts):
    print(*parts, flush=True)


def seconds(d):
    """A google.protobuf.Duration in seconds."""
    return d.seconds + d.nanos / 1e9


# The highest leader term any welcome carried (several masters).
TERM = {"seen": 0}


def session(master, name):
    """One Join stream to `master`; returns (the name the master gave us,
    whether we were drained, the leader a standby named if it did, whether
    we were welcomed)."""
    welcomed = False
    outbox = queue.Queue()
    done = threading.Event()

    def frames():
        while not done.is_set():
            try:
                frame = outbox.get(timeout=0.5)
            except queue.Empty:
                continue
            if frame is None:
                return
            yield frame

    # The master hands out the heartbeat interval, in the welcome and again
    # (a settings frame) as the cluster grows or shrinks past its budget.
    timing = {"interval": 1.0}

    def heartbeat():
        seq = 0
        while not done.wait(timing["interval"]):
            seq += 1
            outbox.put(pb.MemberFrame(heartbeat=pb.Heartbeat(seq=seq)))

    def follow(settings):
        # With several masters (a term), a silent leader is left sooner.
        silence = settings.suspect_after if TERM["seen"] else settings.dead_after
        heard["limit"] = max(seconds(silence), 1.0)
        timing["interval"] = max(seconds(settings.heartbeat_interval), 0.1)

    outbox.put(pb.MemberFrame(hello=pb.Hello(role=pb.ROLE_WORKER, name=name, pid=os.getpid(),
                                             host=os.uname().nodename, version="python-example")))
    metadata = [("authorization", f"Bearer {TOKEN}")] if TOKEN else []
    channel = grpc.insecure_channel(master)
    call = rpc.MembershipStub(channel).Join(frames(), metadata=metadata)
    # "Alive but silent" is dead: a master we stop hearing from is left,
    # and joined again.
    heard = {"at": time.monotonic(), "limit": WELCOME_TIMEOUT}

    def watchdog():
        while not done.wait(0.5):
            if time.monotonic() - heard["at"] > heard["limit"]:
                log("SILENT", f"nothing from the master for {heard['limit']:g} s")
                call.cancel()
                return

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        for frame in call:
            heard["at"] = time.monotonic()
            kind = frame.WhichOneof("kind")
            if kind == "welcome":
                if frame.welcome.term < TERM["seen"]:
                    log("STALE", f"{master} welcomed with term {frame.welcome.term}, below {TERM['seen']}")
                    return name, False, None, False
                TERM["seen"] = frame.welcome.term
                welcomed = True
                name = frame.welcome.name
                follow(frame.welcome.settings)
                threading.Thread(target=heartbeat, daemon=True).start()
                outbox.put(pb.MemberFrame(ready=pb.Ready()))
                log("WELCOME", name)
            elif kind == "deliver":
                env = frame.deliver
                sender = getattr(env, "from")
                if env.reply_to:
                    # Only the master's reply path sets reply_to, on answers
                    # to our own requests; this example makes none, so it is
                    # nobody's message. A client that does make requests
                    # matches reply_to against its own pending ids, which
                    # must be random (uuid4), not a counter others can guess.
                    log("IGNORED", "a reply to no request of ours", "FROM", sender)
                elif env.expects_reply and env.action == "add":
                    args = json.loads(env.data)
                    answer = {"sum": args["a"] + args["b"], "by": name}
                    outbox.put(pb.MemberFrame(reply=pb.Envelope(
                        id=f"{name}-{env.id}", action=env.action, reply_to=env.id,
                        data=json.dumps(answer).encode())))
                else:
                    log("GOT", env.action, env.data.decode(errors="replace"), "FROM", sender)
            elif kind == "settings":
                follow(frame.settings)
                log("SETTINGS", f"heartbeat every {timing['interval']:g} s")
            elif kind == "drain":
                log("DRAIN", frame.drain.reason)
                return name, True, None, True
    except grpc.RpcError as e:
        leader = dict(e.trailing_metadata() or ()).get("cohort-leader")
        if e.code() == grpc.StatusCode.UNAVAILABLE and leader:
            log("LEADER", leader, "named by", master)
            return name, False, leader, welcomed
        log("DISCONNECTED", master, e.code().name, e.details())
        if e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT):
            sys.exit(f"the master refused us: {e.details()}")
    finally:
        done.set()
        outbox.put(None)
        channel.close()
    return name, False, None, welcomed


def main():
    name, delay, at, failed = NAME, 1.0, 0, 0
    # Passes in which a standby named a leader we could not reach: most
    # likely it has just died and etcd still holds its key for up to a
    # lease TTL, so the next pass comes soon (a few times, then backoff).
    answered, soon = False, 0
    while True:
        master, hops = MASTERS[at], 0
        name, drained, leader, welcomed = session(master, name)
        while leader and hops < 2:
            hops, answered = hops + 1, True
            name, drained, leader, welcomed = session(leader, name)
        if drained:
            return
        if welcomed:
            failed, delay, answered, soon = 0, 1.0, False, 0
        # The next master at once; a pause only after every one failed.
        at, failed = (at + 1) % len(MASTERS), failed + 1
        if failed < len(MASTERS):
            continue
        failed = 0
        if answered and soon < 10:
            answered, soon = False, soon + 1
            time.sleep(0.3 * random.uniform(0.8, 1.2))
            continue
        time.sleep(delay * random.uniform(0.8, 1.2))
        delay = min(delay * 1.6, 30.0)


if __name__ == "__main__":
    main()
