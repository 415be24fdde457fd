"""An --exec payload: talks to cohort-worker over the JSON-lines channel.

Starts a grandchild (`sleep`) and records its pid in $PAYLOAD_PIDS so tests
can check it ends with the cluster; answers `add` requests; reports ready.
"""

import json
import os
import subprocess
import sys

fd = int(os.environ["COHORT_CHANNEL_FD"])
channel_in = os.fdopen(fd, "r", buffering=1)
channel_out = os.fdopen(os.dup(fd), "w", buffering=1)
grandchild = subprocess.Popen(["sleep", "300"])
with open(os.environ["PAYLOAD_PIDS"], "w") as f:
    f.write(f"{os.getpid()} {grandchild.pid}\n")


def send(obj):
    channel_out.write(json.dumps(obj) + "\n")
    channel_out.flush()


send({"type": "ready"})
for line in channel_in:
    msg = json.loads(line)
    if msg.get("type") == "message" and msg.get("expects_reply"):
        args = msg["data"]
        send({"type": "reply", "to": msg["id"],
              "data": {"sum": args["a"] + args["b"], "by": "payload", "pid": os.getpid()}})
    elif msg.get("type") == "error":
        print("channel error:", msg["message"], file=sys.stderr, flush=True)
