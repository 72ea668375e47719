"""S3 clients, and the one place botocore failures become safehold errors.

Credentials come from the usual AWS chain (environment, ``AWS_PROFILE``/``profile``, the shared
credentials and config files, container/instance roles), from an explicit ``credentials_file``, or
from keys handed in. Retries are botocore's own ("standard" or "adaptive" mode, ``max_attempts``);
``is_transient`` tells the callers that add a second, slower loop on top (part uploads, lock
heartbeats) which failures are worth another try.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectionError,
    CredentialRetrievalError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    SSLError,
)

from ..errors import ConfigError, StorageError, StorageFull

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

RetryMode = Literal["standard", "adaptive", "legacy"]
ChecksumMode = Literal["when_supported", "when_required"]

NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "403",
        "Forbidden",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
    }
)
FULL_CODES = frozenset({"QuotaExceeded", "InsufficientStorage", "XMinioStorageFull"})
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeoutException",
        "OperationAborted",
        "ConditionalRequestConflict",
    }
)
PRECONDITION_CODES = frozenset({"PreconditionFailed", "412"})
CREDENTIAL_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, choose a profile (AWS_PROFILE), or point "
    "the location at a credentials file"
)


@dataclass(frozen=True)
class S3Settings:
    """How to reach one S3-compatible location; everything but the bucket has a default."""

    endpoint_url: str | None = None
    region: str | None = None
    ca_bundle: str | None = None
    profile: str | None = None
    credentials_file: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    retry_mode: RetryMode = "standard"
    max_attempts: int = 5
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    addressing_style: Literal["auto", "path", "virtual"] | None = None
    checksums: ChecksumMode = "when_supported"
    allow_http: bool = False

    @property
    def endpoint_name(self) -> str:
        return self.endpoint_url or f"AWS S3 ({self.region or 'default region'})"


def check_endpoint(settings: S3Settings) -> None:
    """HTTPS everywhere, except plain HTTP to this machine or when explicitly allowed."""
    if settings.endpoint_url is None:
        return
    parts = urlsplit(settings.endpoint_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"S3 endpoint {settings.endpoint_url!r} is not an http(s) URL",
            hint="write it like https://s3.example.com or http://127.0.0.1:8333",
        )
    if parts.scheme == "http" and not settings.allow_http and not _loopback(parts.hostname):
        raise ConfigError(
            f"S3 endpoint {settings.endpoint_url} is plain HTTP: backups would cross the network "
            "unencrypted",
            hint="use https:// (with ca_bundle for a private CA), or allow_http = true for a "
            "trusted network",
        )
    if settings.ca_bundle is not None and not Path(settings.ca_bundle).is_file():
        raise ConfigError(f"CA bundle {settings.ca_bundle} does not exist")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_client(settings: S3Settings) -> S3Client:
    check_endpoint(settings)
    core = botocore.session.Session()
    if settings.credentials_file is not None:
        if not Path(settings.credentials_file).is_file():
            raise ConfigError(f"S3 credentials file {settings.credentials_file} does not exist")
        core.set_config_variable("credentials_file", settings.credentials_file)
    try:
        session = boto3.session.Session(
            botocore_session=core,
            profile_name=settings.profile,
            region_name=settings.region,
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            aws_session_token=settings.session_token,
        )
    except ProfileNotFound as exc:
        raise ConfigError(
            f"AWS profile {settings.profile!r} not found",
            hint="check ~/.aws/credentials and ~/.aws/config, or the location's credentials file",
        ) from exc
    region = settings.region or session.region_name or "us-east-1"
    style = settings.addressing_style or ("path" if settings.endpoint_url else "auto")
    config = Config(
        region_name=region,
        signature_version="s3v4",
        retries={"mode": settings.retry_mode, "max_attempts": settings.max_attempts},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        s3={"addressing_style": style},
        request_checksum_calculation=settings.checksums,
        response_checksum_validation=settings.checksums,
        max_pool_connections=16,
    )
    verify: str | bool = settings.ca_bundle if settings.ca_bundle is not None else True
    return session.client("s3", endpoint_url=settings.endpoint_url, verify=verify, config=config)


def error_code(exc: BaseException) -> str | None:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "")) or None
    return None


def http_status(exc: BaseException) -> int | None:
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status is not None else None
    return None


def is_not_found(exc: BaseException) -> bool:
    return error_code(exc) in NOT_FOUND_CODES


def is_precondition_failed(exc: BaseException) -> bool:
    return error_code(exc) in PRECONDITION_CODES or http_status(exc) == 412


def is_transient(exc: BaseException) -> bool:
    """Worth another try later: the server or the network, not the request, was at fault."""
    if isinstance(exc, SSLError):
        return False
    if isinstance(exc, ConnectionError | HTTPClientError | IncompleteReadError):
        return True
    status = http_status(exc)
    return error_code(exc) in TRANSIENT_CODES or status in (500, 502, 503, 504)


def storage_error(
    exc: BaseException, settings: S3Settings, where: str, action: str
) -> StorageError:
    """A safehold error naming the location and endpoint, with what to do next."""
    endpoint = settings.endpoint_name
    tries = f"tried {settings.max_attempts} times"
    if isinstance(exc, SSLError):
        return StorageError(
            f"the TLS certificate of {endpoint} was not accepted while trying to {action}",
            hint="if the server uses a private CA, give that CA's certificate as ca_bundle",
        )
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return StorageError(f"no usable S3 credentials for {where}", hint=CREDENTIAL_HINT)
    if isinstance(exc, ConnectionError):
        return StorageError(
            f"cannot reach the S3 endpoint {endpoint} to {action} ({tries})",
            hint="check the endpoint URL, the network, and that the server is running",
        )
    if isinstance(exc, ConnectionClosedError | HTTPClientError | IncompleteReadError):
        return StorageError(
            f"the connection to {endpoint} broke while trying to {action} ({tries})",
            hint="check the network and the server's health; nothing partial was kept",
        )
    code = error_code(exc)
    if code == "NoSuchBucket":
        return StorageError(
            f"the bucket of {where} does not exist at {endpoint}",
            hint="create the bucket, or fix the bucket name in the location",
        )
    if code in DENIED_CODES:
        return StorageError(
            f"access denied to {where} at {endpoint} ({code}) while trying to {action}",
            hint=f"check the credentials and the bucket policy; {CREDENTIAL_HINT}",
        )
    if code in FULL_CODES or http_status(exc) == 507:
        return StorageFull(
            f"{where} is out of space or quota ({code})",
            hint="free space in the bucket, raise its quota, or prune old backups",
        )
    if isinstance(exc, ClientError):
        message = exc.response.get("Error", {}).get("Message", "")
        return StorageError(f"S3 refused to {action} at {where} ({endpoint}): {code} {message}")
    if isinstance(exc, BotoCoreError):
        return StorageError(f"S3 client error while trying to {action} at {where}: {exc}")
    return StorageError(f"unexpected error while trying to {action} at {where}: {exc!r}")
