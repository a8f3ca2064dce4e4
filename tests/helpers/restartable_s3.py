"""An S3-compatible server (moto, in its own process) that can be stopped and started again on the same port.

moto keeps objects in memory; a real object store keeps them on disk across a restart. ``stop`` reads every
object out before it ends the server and ``start`` writes them back into a fresh moto process on a private
port before the public port opens again (a forwarding process, ``tcp_proxy.py``), so a client sees what it
would see from a real server going away and coming back: refused connections, then the same bucket and
objects, never an empty store. Both ports are bound as 0 at the first start (ports no other process holds);
the public one is kept for the restarts.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers.ports import start_moto, start_server


class RestartableS3Server:
    def __init__(self, bucket: str):
        self.bucket = bucket
        self.port = 0  # the public port, chosen at the first start
        self.process: subprocess.Popen | None = None  # moto, on a private port
        self.proxy: subprocess.Popen | None = None  # the public port
        self.private_port = 0
        self.objects: dict[str, bytes] = {}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, port: int | None = None):
        import boto3

        return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port or self.port}", aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def start(self) -> None:
        self.process, self.private_port = start_moto()
        client = self.client(self.private_port)
        client.create_bucket(Bucket=self.bucket)
        for key, body in self.objects.items():
            client.put_object(Bucket=self.bucket, Key=key, Body=body)
        proxy = [sys.executable, str(Path(__file__).with_name("tcp_proxy.py")), str(self.port), str(self.private_port)]
        self.proxy, self.port = start_server(proxy, f"the S3 port {self.port}" if self.port else "the S3 port")

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
