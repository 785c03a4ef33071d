"""Runs moto's S3 server with authentication on; started by tests/support/s3_server.py in moto's own venv.

Not imported by the tests (moto cannot live in the project's venv: see scripts/install-s3-server.sh).
argv: HOST PORT BUCKET...; prints one JSON line (endpoint, credentials), then serves until stdin closes or SIGTERM.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading

import boto3
from moto import settings
from moto.core.authorization import ActionAuthenticatorMixin
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
#: Any request signed with other keys, or unsigned, is refused once set up (moto checks signatures and IAM policies).
POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


def main() -> None:
    host, port, buckets = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    port = server.get_host_and_port()[1]
    local = "127.0.0.1" if host in ("0.0.0.0", "") else host
    endpoint = f"http://{local}:{port}"
    setup = {"endpoint_url": endpoint, "region_name": REGION, "aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
    iam = boto3.client("iam", **setup)
    iam.create_user(UserName="conveyor")
    iam.put_user_policy(UserName="conveyor", PolicyName="s3", PolicyDocument=json.dumps(POLICY))
    key = iam.create_access_key(UserName="conveyor")["AccessKey"]
    s3 = boto3.client("s3", **setup)
    for bucket in buckets:
        s3.create_bucket(Bucket=bucket)
    # From now on every request is authenticated (what moto's /moto-api/reset-auth does, in this process).
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0
    print(
        json.dumps(
            {"port": port, "endpoint": endpoint, "access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"], "region": REGION}
        ),
        flush=True,
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait()
    server.stop()


if __name__ == "__main__":
    main()
