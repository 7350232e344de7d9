"""Sends receivers' requests over HTTP (aiohttp), and says whether a failure is worth
retrying: connection errors, timeouts, 408, 429 and 5xx are (PagerDuty's "Response
Codes & Retry Logic"; Alertmanager and Slack answer the same way); any other 4xx is the
request's fault and is not."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiohttp

from services.alerts.receivers.common import Request

RETRYABLE_STATUSES = frozenset({408, 425, 429})
USER_AGENT = "cx-alerts-notifier/1"


class DeliveryError(Exception):
    """A request that did not succeed; `retryable` says whether to try again."""

    def __init__(
        self, message: str, *, retryable: bool, status: int = 0, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after_s = retry_after_s


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (seconds, or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def classify(status: int, text: str, retry_after_header: str | None = None) -> None:
    """Raises DeliveryError unless `status` is a success (2xx)."""
    if 200 <= status < 300:
        return
    detail = f"HTTP {status}: {' '.join(text.split())[:200]}".rstrip(": ")
    retryable = status >= 500 or status in RETRYABLE_STATUSES
    raise DeliveryError(
        detail, retryable=retryable, status=status, retry_after_s=retry_after(retry_after_header)
    )


class HttpSender:
    """One connection pool for every receiver; each request bounded by `timeout_s`."""

    def __init__(self, timeout_s: float = 10.0) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self.timeout, headers={"User-Agent": USER_AGENT}
            )
        return self._session

    async def send(self, request: Request) -> int:
        """The status of a successful answer; DeliveryError otherwise."""
        try:
            async with self._client().request(
                request.method,
                request.url,
                data=request.body,
                headers=request.headers,
                allow_redirects=False,
            ) as response:
                text = await response.text(errors="replace")
                classify(response.status, text, response.headers.get("Retry-After"))
                return response.status
        except DeliveryError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise DeliveryError(
                f"{type(exc).__name__}: {exc}".rstrip(": "), retryable=True
            ) from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
