"""A Cohort worker written with plain grpcio, as any language could.

usage: member.py STUBS_DIR MASTER_ADDR NAME

Joins as a worker, reports ready, heartbeats, prints one line per
broadcast it receives ("GOT action data FROM sender"), and answers `add`
requests with the sum of the JSON numbers "a" and "b".
"""

import json
import os
import queue
import sys
import threading
import time

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from cohort.v1 import cohort_pb2 as pb  # noqa: E402
from cohort.v1 import cohort_pb2_grpc as rpc  # noqa: E402

master, name = sys.argv[2], sys.argv[3]
outbox = queue.Queue()


def frames():
    while True:
        frame = outbox.get()
        if frame is None:
            return
        yield frame


def heartbeat(interval):
    seq = 0
    while True:
        time.sleep(interval)
        seq += 1
        outbox.put(pb.MemberFrame(heartbeat=pb.Heartbeat(seq=seq)))


outbox.put(pb.MemberFrame(hello=pb.Hello(
    role=pb.ROLE_WORKER, name=name, pid=os.getpid(), host="python")))
stub = rpc.MembershipStub(grpc.insecure_channel(master))
for frame in stub.Join(frames()):
    kind = frame.WhichOneof("kind")
    if kind == "welcome":
        interval = frame.welcome.settings.heartbeat_interval_ms / 1000.0
        threading.Thread(target=heartbeat, args=(interval,), daemon=True).start()
        outbox.put(pb.MemberFrame(ready=pb.Ready()))
        print("WELCOME", frame.welcome.name, flush=True)
    elif kind == "deliver":
        env = frame.deliver
        sender = getattr(env, "from")
        if env.expects_reply and env.action == "add":
            args = json.loads(env.data)
            answer = json.dumps({"sum": args["a"] + args["b"], "by": name})
            outbox.put(pb.MemberFrame(reply=pb.Envelope(
                id="py-" + env.id, action=env.action, reply_to=env.id,
                data=answer.encode())))
        else:
            print("GOT", env.action, env.data.decode(), "FROM", sender, flush=True)
