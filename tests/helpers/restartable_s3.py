"""An S3-compatible server (moto, in its own process) that can be stopped and started again on the same port.

moto keeps objects in memory; a real object store keeps them on disk across a restart. ``stop`` reads every
object out before it ends the server and ``start`` writes them back into a fresh moto process on a private
port before the public port opens again (a forwarding process, ``tcp_proxy.py``), so a client sees what it
would see from a real server going away and coming back: refused connections, then the same bucket and
objects, never an empty store.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers.ports import free_port, wait_for_port


class RestartableS3Server:
    def __init__(self, port: int, bucket: str):
        self.port, self.bucket = port, bucket
        self.endpoint = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None  # moto, on a private port
        self.proxy: subprocess.Popen | None = None  # the public port
        self.private_port = 0
        self.objects: dict[str, bytes] = {}

    def client(self, port: int | None = None):
        import boto3

        return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port or self.port}", aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def start(self) -> None:
        self.private_port = free_port()
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                         str(self.private_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.private_port, self.process, "the moto S3 server")
        client = self.client(self.private_port)
        client.create_bucket(Bucket=self.bucket)
        for key, body in self.objects.items():
            client.put_object(Bucket=self.bucket, Key=key, Body=body)
        self.proxy = subprocess.Popen([sys.executable, str(Path(__file__).with_name("tcp_proxy.py")), str(self.port),
                                       str(self.private_port)])
        wait_for_port(self.port, self.proxy, "the S3 port")

    def keys(self) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def stop(self) -> None:
        self.proxy.terminate()  # clients are refused from here on
        self.proxy.wait(timeout=10)
        client = self.client(self.private_port)
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        self.objects = {obj["Key"]: client.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read()
                        for page in pages for obj in page.get("Contents", [])}
        self.process.terminate()
        self.process.wait(timeout=10)
        self.process = self.proxy = None
