"""An S3-compatible server process (moto) that can be stopped and started again on the same port.

moto keeps objects in memory; a real object store keeps them on disk across a restart. ``stop`` reads every
object out before it ends the process and ``start`` writes them back, so a client sees what it would see from
a real server going away and coming back: refused connections, then the same bucket and objects.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time


class RestartableS3Server:
    def __init__(self, port: int, bucket: str):
        self.port, self.bucket = port, bucket
        self.endpoint = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None
        self.objects: dict[str, bytes] = {}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or self.process.poll() is not None:
                    raise RuntimeError("the moto S3 server did not start") from None
                time.sleep(0.1)
        client = self.client()
        client.create_bucket(Bucket=self.bucket)
        for key, body in self.objects.items():
            client.put_object(Bucket=self.bucket, Key=key, Body=body)

    def keys(self) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def stop(self) -> None:
        client = self.client()
        self.objects = {key: client.get_object(Bucket=self.bucket, Key=key)["Body"].read() for key in self.keys()}
        self.process.terminate()
        self.process.wait(timeout=10)
        self.process = None
