"""Object storage helpers for ``s3://`` locations.

The endpoint comes from ``S3_ENDPOINT_URL`` (what streaming and Composer read) or
``AWS_ENDPOINT_URL_S3`` (what botocore reads); credentials from the standard AWS variables.
Timeouts are short so an unreachable server is reported within seconds instead of hanging.
"""

from __future__ import annotations

import os
import threading
from urllib.parse import urlparse

from maxtoki.errors import MaxtokiError


def is_remote(uri: str) -> bool:
    return urlparse(str(uri)).scheme not in ("", "file")


def split_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise MaxtokiError(f"{uri}: only s3://bucket/prefix remote locations are supported")
    return parsed.netloc, parsed.path.lstrip("/")


ENDPOINT_VARIABLES = ("S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def drop_empty_endpoints() -> None:
    """An endpoint variable set to the empty string means unset. Composer and streaming hand it to boto3
    as it is, which refuses it ("Invalid endpoint") even for AWS, where no endpoint is needed; removed
    from the environment, it also stays away from worker processes spawned later."""
    for name in ENDPOINT_VARIABLES:
        if name in os.environ and not os.environ[name].strip():
            del os.environ[name]


def endpoint_url() -> str | None:
    return os.environ.get("S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") or None


# what a client is made of besides the endpoint: a change of any of them gets a client of its own
CLIENT_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION",
                    "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")
_clients: dict[tuple, object] = {}  # by process (a forked child makes its own) and settings
_clients_lock = threading.Lock()


def _new_lock_after_fork() -> None:
    global _clients_lock
    _clients_lock = threading.Lock()  # another thread of the parent may have held it at the fork


os.register_at_fork(after_in_child=_new_lock_after_fork)


def s3_client():
    """One client per process and S3 settings, shared (botocore clients are thread-safe). A new one reads
    botocore's service descriptions again, about 0.15 s: made afresh for every call, 25 of them took half
    the time of a two-batch training run on S3."""
    key = (os.getpid(), endpoint_url(), *(os.environ.get(name) for name in CLIENT_VARIABLES))
    with _clients_lock:
        if key not in _clients:
            import boto3
            from botocore.config import Config

            config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"})
            _clients[key] = boto3.session.Session().client("s3", endpoint_url=endpoint_url(), config=config)
        return _clients[key]


def _describe(uri: str, exc: Exception) -> MaxtokiError:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    where = endpoint_url() or "the default AWS endpoint"
    if isinstance(exc, EndpointConnectionError):
        return MaxtokiError(f"{uri}: cannot reach the S3 server at {where}; check S3_ENDPOINT_URL / "
                            "AWS_ENDPOINT_URL_S3 and that the server is running")
    if isinstance(exc, NoCredentialsError):
        return MaxtokiError(f"{uri}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchBucket", "404"):
            return MaxtokiError(f"{uri}: the bucket does not exist at {where}; create it first")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return MaxtokiError(f"{uri}: access denied ({code}); check the AWS credentials")
    return MaxtokiError(f"{uri}: S3 request failed ({exc})")


def list_keys(uri: str) -> list[str]:
    """All object keys under an ``s3://bucket/prefix/`` (as full keys)."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_s3_uri(uri)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    try:
        paginator = s3_client().get_paginator("list_objects_v2")
        return [obj["Key"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
                for obj in page.get("Contents", [])]
    except (BotoCoreError, ClientError) as exc:
        raise _describe(uri, exc) from None


def delete_prefix(uri: str) -> int:
    """Delete every object under the prefix; returns how many."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _ = split_s3_uri(uri)
    keys = list_keys(uri)
    client = s3_client()
    try:
        for i in range(0, len(keys), 1000):
            client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})
    except (BotoCoreError, ClientError) as exc:
        raise _describe(uri, exc) from None
    return len(keys)


def delete_keys(prefix: str, names: list[str]) -> None:
    """Delete the objects ``prefix/name`` (a no-op for an empty list)."""
    from botocore.exceptions import BotoCoreError, ClientError

    if not names:
        return
    bucket, key = split_s3_uri(prefix.rstrip("/"))
    keys = [f"{key}/{name}" if key else name for name in names]
    try:
        for i in range(0, len(keys), 1000):
            s3_client().delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})
    except (BotoCoreError, ClientError) as exc:
        raise _describe(prefix, exc) from None


def upload_bytes(uri: str, payload: bytes) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3_uri(uri)
    try:
        s3_client().put_object(Bucket=bucket, Key=key, Body=payload)
    except (BotoCoreError, ClientError) as exc:
        raise _describe(uri, exc) from None


def download_bytes(uri: str) -> bytes:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3_uri(uri)
    try:
        return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except (BotoCoreError, ClientError) as exc:
        raise _describe(uri, exc) from None


def download_file(uri: str, local_path: str) -> None:
    """Download one object to a local file (written under a temporary name, then renamed)."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3_uri(uri)
    tmp = f"{local_path}.tmp-{os.getpid()}"
    os.makedirs(os.path.dirname(local_path) or ".", exist_ok=True)
    try:
        s3_client().download_file(bucket, key, tmp)
    except (BotoCoreError, ClientError) as exc:
        raise _describe(uri, exc) from None
    os.replace(tmp, local_path)


def object_identity(uri: str) -> str:
    """The object's ETag and size: they change whenever the object is written again."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3_uri(uri)
    try:
        head = s3_client().head_object(Bucket=bucket, Key=key)
    except (BotoCoreError, ClientError) as exc:
        raise _describe(uri, exc) from None
    return f"{head.get('ETag', '')}:{head.get('ContentLength', '')}"


def local_cache_root() -> str:
    """Where remote data and checkpoints are cached on this machine: ``MAXTOKI_CACHE`` (e.g. a mounted
    disk on a cloud VM) or the system's temporary directory."""
    import tempfile

    return os.environ.get("MAXTOKI_CACHE") or os.path.join(tempfile.gettempdir(), "maxtoki-cache")


def object_exists(uri: str) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3_uri(uri)
    try:
        s3_client().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise _describe(uri, exc) from None
    except BotoCoreError as exc:
        raise _describe(uri, exc) from None


def resolve_checkpoint(uri: str) -> str:
    """``.../latest-rank0.pt`` on S3 is stored by Composer as ``latest-rank0.pt.symlink`` naming the real
    checkpoint: follow it (given with or without ``.symlink``), so the same name works locally and remotely."""
    link = uri if uri.endswith(".symlink") else f"{uri}.symlink"
    if link != uri and object_exists(uri):
        return uri
    if object_exists(link):
        bucket, _ = split_s3_uri(uri)
        target = download_bytes(link).decode().strip()
        return f"s3://{bucket}/{target}" if "/" in target else f"{uri.rsplit('/', 1)[0]}/{target}"
    raise MaxtokiError(f"{uri}: no such checkpoint")
