"""AWS_KMS's client: its options, and one boto3 call under a deadline with AWS's failures
as qkms errors (``KmsCalls``, which ``aws.AwsKmsProvider`` is built on).

Options come from the environment (``AWS_REGION``...) or a KeyPolicy's settings
(``region``...), the policy first; credentials from the options when given, else from the
standard AWS chain.  No error message ever contains credentials.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import boto3
from botocore import exceptions as boto_errors
from botocore.config import Config

from qkms.crypto import InvalidCiphertext
from qkms.errors import (
    InvalidInputError,
    KeyNotFoundError,
    KeyStateError,
    ProviderUnavailableError,
)
from qkms.model.enums import ProviderType

REJECTED = frozenset({"ValidationException", "UnsupportedOperationException"})
THROTTLED = frozenset({"ThrottlingException", "TooManyRequestsException"})
UNAVAILABLE = THROTTLED | frozenset({"KMSInternalException",
                         "DependencyTimeoutException", "KeyUnavailableException",
                         "ServiceUnavailableException", "LimitExceededException"})
DENIED = frozenset({"AccessDeniedException", "UnrecognizedClientException",
                    "InvalidClientTokenId", "ExpiredTokenException", "InvalidSignatureException",
                    "IncompleteSignature", "MissingAuthenticationToken"})


def _option(options: dict[str, str], *names: str) -> str | None:
    """The first non-empty option: the KeyPolicy setting (``region``) before the operator's
    environment (``AWS_REGION``), as the policy is the more specific of the two."""
    return next((options[n] for n in names if options.get(n)), None)


@dataclass(frozen=True)
class AwsOptions:
    region: str
    endpoint: str | None = None
    wrap_key: str = "alias/qkms/wrap"
    timeout: float = 5.0
    credentials: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_options(cls, options: dict[str, str]) -> AwsOptions:
        """Environment names (``AWS_REGION``...) or KeyPolicy settings (``region``...);
        credentials from the options when given, else from the standard AWS chain."""
        region = _option(options, "region", "AWS_REGION", "AWS_DEFAULT_REGION")
        if not region:
            raise InvalidInputError("AWS_REGION", "is required for AWS_KMS")
        try:
            timeout = float(_option(options, "timeout", "AWS_KMS_TIMEOUT") or 5)
        except ValueError:
            raise InvalidInputError("AWS_KMS_TIMEOUT", "must be a number of seconds") from None
        if timeout <= 0:
            raise InvalidInputError("AWS_KMS_TIMEOUT", "must be positive")
        credentials = {arg: value for arg, names in (
            ("aws_access_key_id", ("accessKeyId", "AWS_ACCESS_KEY_ID")),
            ("aws_secret_access_key", ("secretAccessKey", "AWS_SECRET_ACCESS_KEY")),
            ("aws_session_token", ("sessionToken", "AWS_SESSION_TOKEN")),
            ("profile_name", ("profile", "AWS_PROFILE")),
        ) if (value := _option(options, *names))}
        return cls(region=region,
                   endpoint=_option(options, "endpoint", "endpointUrl", "AWS_ENDPOINT_URL_KMS",
                                    "AWS_ENDPOINT_URL"),
                   wrap_key=_option(options, "keyId", "kmsKeyId", "AWS_KMS_KEY_ID")
                   or "alias/qkms/wrap",
                   timeout=timeout, credentials=credentials)

    @property
    def address(self) -> str:
        return self.endpoint or f"https://kms.{self.region}.amazonaws.com"


class Rejected(Exception):
    """The endpoint refused a request as invalid (a key spec it does not know, say)."""


def kms_client(options: AwsOptions) -> Any:
    """A boto3 KMS client with the deadline as its timeouts and its own retries off."""
    try:
        session = boto3.session.Session(region_name=options.region, **options.credentials)
    except boto_errors.ProfileNotFound:
        raise InvalidInputError("AWS_PROFILE", "no such profile in the AWS config") from None
    return session.client("kms", endpoint_url=options.endpoint, config=Config(
        connect_timeout=options.timeout, read_timeout=options.timeout,
        retries={"total_max_attempts": 1},  # see KmsCalls.call()
        max_pool_connections=32, user_agent_extra="qkms"))


class KmsCalls:
    """The client built from the options, and ``call``: one KMS call under the deadline, a
    throttled one retried once, its failures as qkms errors (``_translate``)."""

    type: ClassVar[ProviderType]

    def __init__(self, options: AwsOptions) -> None:
        self.options = options
        self.client = kms_client(options)

    def unavailable(self, reason: str) -> ProviderUnavailableError:
        return ProviderUnavailableError(f"{self.type.value} at {self.options.address}: {reason}")

    async def call(self, fn: Callable[..., Any], *, key_id: str | None = None,
                   bad_ciphertext: bool = False, rejectable: bool = False,
                   tolerate: frozenset[str] = frozenset(), **kwargs: Any) -> Any:
        """Run one boto3 call in a thread under the deadline, mapping failures to qkms errors.

        ``key_id`` turns NotFound into ``KeyNotFoundError``; ``bad_ciphertext`` turns
        InvalidCiphertext into the crypto layer's ``InvalidCiphertext``; ``rejectable``
        raises ``Rejected`` for a request the endpoint refuses as invalid; error codes in
        ``tolerate`` return None.  A throttled request (never executed) is retried once if
        the deadline allows; botocore's own retries are off, as their back-off would hide
        a refused connection behind the deadline.
        """
        timeout = self.options.timeout
        deadline = time.monotonic() + timeout
        for attempt in range(2):
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                    return await asyncio.to_thread(fn, **kwargs)
            except boto_errors.ClientError as exc:
                error = exc.response.get("Error", {})
                code = str(error.get("Code", "Unknown"))
                if code in tolerate:
                    return None
                if code in THROTTLED and attempt == 0 and deadline - time.monotonic() > 0.5:
                    await asyncio.sleep(0.2)
                    continue
                status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
                raise self._translate(code, str(error.get("Message", ""))[:200], status,
                                      key_id, bad_ciphertext, rejectable) from None
            except (TimeoutError, boto_errors.ReadTimeoutError, boto_errors.ConnectTimeoutError):
                raise self.unavailable(f"no answer within {timeout:g}s") from None
            except boto_errors.NoCredentialsError:
                raise self.unavailable("no AWS credentials found") from None
            except (boto_errors.ConnectionError, boto_errors.HTTPClientError) as exc:
                refused = "refused" in str(exc).lower() or isinstance(
                    exc, boto_errors.EndpointConnectionError)
                raise self.unavailable("connection refused" if refused
                                       else "connection failed") from None
            except boto_errors.BotoCoreError as exc:
                raise self.unavailable(type(exc).__name__) from None
        raise self.unavailable("throttled")

    def _translate(self, code: str, message: str, status: int, key_id: str | None,
                   bad_ciphertext: bool, rejectable: bool) -> Exception:
        if code in DENIED:
            return self.unavailable(f"access denied ({code}): check the credentials and "
                                    "the key policy")
        if code in UNAVAILABLE or status >= 500:
            return self.unavailable(f"{code}: {message}" if message else code)
        if code == "NotFoundException" and key_id:
            return KeyNotFoundError(key_id)
        if code == "InvalidCiphertextException" and bad_ciphertext:
            return InvalidCiphertext(code)
        if code in ("DisabledException", "KMSInvalidStateException") and key_id:
            return KeyStateError(f"Key version not usable: {key_id} is disabled or pending "
                                 "deletion in AWS KMS")
        if code in REJECTED and rejectable:
            return Rejected(f"{code}: {message}")
        return self.unavailable(f"request refused: {code}: {message}")
