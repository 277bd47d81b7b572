"""What a notification says and how it is sent: the webhook JSON, its Slack rendering, the HTTP post.

Every notification is first one JSON document with a stable `schema_version` (what a
generic webhook receives); a Slack channel gets the same facts as Block Kit with a plain
`text` fallback. Bodies are rendered once, when the notification is written to the
outbox, so every attempt sends the same bytes under the same signature and key.

Requests go through the transport directly rather than an httpx Client, whose INFO log
line carries the full URL, and a Slack webhook URL is a credential.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import ipaddress
import json
import math
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx

import driftline
from driftline.storage.meta.alerting import ChannelType

SCHEMA_VERSION = "1"
SIGNATURE_HEADER = "X-Driftline-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
EVENT_HEADER = "X-Driftline-Event"
ATTEMPT_HEADER = "X-Driftline-Attempt"

# the dashboard page that shows a detector's results
PAGES = {
    "feature_drift": "drift",
    "prediction_drift": "drift",
    "dataset_drift": "drift",
    "data_quality": "drift",
    "performance": "performance",
    "estimated_performance": "performance",
    "blended_performance": "performance",
    "concept_drift": "performance",
    "label_drift": "performance",
    "calibration": "performance",
    "slice_performance": "performance",
    "operations": "operations",
}
_DETAIL_KEYS = (
    "method",
    "p_value",
    "p_adjusted",
    "drift_adjusted",
    "threshold_on",
    "direction",
    "expected",
    "ratio",
    "reference",
    "label_coverage",
    "labelled",
    "z",
    "reason",
)
_EMOJI = {"firing": ":red_circle:", "repeat": ":red_circle:", "resolved": ":large_green_circle:"}


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(int(epoch), UTC).isoformat().replace("+00:00", "Z")


def iso_dt(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def figures_of(row: dict[str, Any]) -> dict[str, Any]:
    """What a state keeps of a window's row to report it later: small and JSON-safe."""
    details = row.get("details") or {}
    kept = {k: details[k] for k in _DETAIL_KEYS if k in details and not isinstance(details[k], dict | list)}
    return {
        "window_start": int(row["window_start"]),
        "window_end": int(row["window_end"]),
        "value": _finite(row.get("value")),
        "threshold": _finite(row.get("threshold")),
        "alert": bool(row.get("alert")),
        "sample_size": int(row.get("sample_size") or 0),
        "details": {k: _finite(v) for k, v in kept.items()},
    }


def dashboard_link(public_url: str | None, page: str, **params: Any) -> str | None:
    if not public_url:
        return None
    query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
    return f"{public_url.rstrip('/')}/{page}" + (f"?{query}" if query else "")


def dumps(payload: dict[str, Any]) -> str:
    """The body's one serialisation: compact, keys sorted, no NaN."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


# -- documents --------------------------------------------------------------------------------


def alert_document(
    *,
    key: str,
    event: str,
    created_at: datetime,
    project: str,
    alert: dict[str, Any],
    link: str | None,
) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "id": key,
        "type": f"alert.{event}",
        "created_at": iso_dt(created_at),
        "project": project,
        "url": link,
        "alert": alert,
    }


def sample_document(
    *, key: str, created_at: datetime, project: str, channel: str, link: str | None
) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "id": key,
        "type": "test",
        "created_at": iso_dt(created_at),
        "project": project,
        "url": link,
        "channel": channel,
        "message": f"driftline test message for channel {channel!r} of project {project!r}",
    }


def trigger_document(
    *, key: str, created_at: datetime, project: str, trigger: dict[str, Any], link: str | None
) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "id": key,
        "type": "retraining.trigger",
        "created_at": iso_dt(created_at),
        "project": project,
        "url": link,
        "trigger": trigger,
    }


def render(channel: ChannelType, document: dict[str, Any]) -> str:
    """The body a channel of this type receives."""
    if channel is ChannelType.SLACK:
        return dumps(slack_message(document))
    return dumps(document)


# -- Slack ------------------------------------------------------------------------------------


def _esc(text: Any) -> str:
    """Slack mrkdwn treats &, < and > as control characters."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _num(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return f"{value:.4g}"
    return str(value)


def _window(window: dict[str, Any]) -> str:
    start, end = window.get("start") or "?", window.get("end") or "?"
    return f"{start} to {end}"


def _what(a: dict[str, Any]) -> str:
    parts = [f"{a['detector']} `{a['metric']}`"]
    if a.get("feature"):
        parts.append(f"on `{a['feature']}`")
    if a.get("slice"):
        parts.append(f"in slice `{a['slice']}`")
    return " ".join(parts)


def figures_line(a: dict[str, Any]) -> str:
    """The value against the threshold, as a reader needs it."""
    rule = a["rule"]
    value, threshold = _num(a.get("value")), _num(a.get("threshold"))
    if rule["condition"]["op"] == "alert":
        line = f"{value} (detector threshold {threshold})"
        details = a.get("details") or {}
        if "p_adjusted" in details:
            line += f", p adjusted {_num(details['p_adjusted'])}"
    else:
        line = f"{value} {rule['condition']['op']} {threshold}"
    return line


def slack_message(document: dict[str, Any]) -> dict[str, Any]:
    kind = document["type"]
    if kind == "test":
        text = (
            f"driftline test message: channel {document['channel']} of project {document['project']} works."
        )
        return {
            "text": text,
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": _esc(text)}}],
        }
    if kind == "retraining.trigger":
        return _slack_trigger(document)
    a = document["alert"]
    event = kind.removeprefix("alert.")
    title = {"firing": "Firing", "repeat": "Still firing", "resolved": "Resolved"}.get(event, event)
    rule = a["rule"]
    persistence = (
        f"{a['breaches']} of the last {a['windows']} windows (fires at {rule['persistence']['breaches']})"
    )
    version = a.get("version") or "all versions"
    text = (
        f"[{title.upper()}] {a['severity']}: {rule['name']}: model {a['model']} version {version}, "
        f"{a['detector']} {a['metric']}"
        + (f" on {a['feature']}" if a.get("feature") else "")
        + (f" in {a['slice']}" if a.get("slice") else "")
        + f": {figures_line(a).replace('`', '')}; {persistence}; window {_window(a['window'])}"
        + (f" <{document['url']}|open in driftline>" if document.get("url") else "")
    )
    fields = [
        ("Model", a["model"]),
        ("Version", version),
        ("Severity", a["severity"]),
        ("What fired", _what(a)),
        ("Value", figures_line(a)),
        ("Persistence", persistence),
        ("Window", _window(a["window"])),
        ("Condition", rule["condition"]["text"]),
    ]
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": f"{title}: {rule['name']}"[:150], "emoji": True},
        },
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": f"{_EMOJI.get(event, '')} *{_esc(a['model'])}* ({_esc(version)}): {_esc(_what(a))}",
            },
        },
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*{name}*\n{_esc(value)}"[:2000]} for name, value in fields
            ],
        },
    ]
    if document.get("url"):
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open in driftline"},
                        "url": document["url"],
                    }
                ],
            }
        )
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": _esc(
                        f"project {document['project']} · alert {a['id']} · rule {rule['id']} · "
                        f"episode {a['episode']} · {document['created_at']}"
                    ),
                }
            ],
        }
    )
    return {"text": text, "blocks": blocks}


def _slack_trigger(document: dict[str, Any]) -> dict[str, Any]:
    t = document["trigger"]
    evidence = t["evidence"]
    findings = evidence.get("findings", [])
    window = evidence.get("window", {})
    lines = [
        f"• {f['kind']}: {f['detector']} {f['metric']}"
        + (f" on {f['feature']}" if f.get("feature") else "")
        + (f" in {f['slice']}" if f.get("slice") else "")
        + f" ({f['version'] or 'all versions'}), {f['windows']} windows"
        for f in findings[:10]
    ]
    text = (
        f"Retraining trigger {t['id']} for model {t['model']} is {t['state']}: "
        f"{len(findings)} findings, window {_window(window)}"
    )
    return {
        "text": text,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": f"Retraining: {t['model']}"[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": _esc(text)}},
            {"type": "section", "text": {"type": "mrkdwn", "text": _esc("\n".join(lines) or "no findings")}},
        ],
    }


# -- sending ----------------------------------------------------------------------------------


def signature(body: bytes, secret: str) -> str:
    """`sha256=<hex>`: HMAC-SHA256 of the raw body with the channel's secret."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, header: str | None) -> bool:
    """What a receiver does: recompute and compare in constant time."""
    return header is not None and hmac.compare_digest(signature(body, secret), header)


def headers_for(body: bytes, *, key: str, event: str, attempt: int, secret: str | None) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": f"driftline/{driftline.__version__}",
        IDEMPOTENCY_HEADER: key,
        EVENT_HEADER: event,
        ATTEMPT_HEADER: str(attempt),
    }
    if secret:
        headers[SIGNATURE_HEADER] = signature(body, secret)
    return headers


@dataclass(frozen=True)
class Outcome:
    """One attempt: delivered, or why not and whether trying again can help."""

    ok: bool
    status: int | None = None
    retryable: bool = True
    retry_after: float | None = None
    error: str = ""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


_RETRYABLE = frozenset({408, 425, 429})

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# cloud metadata services outside the link-local ranges: AWS over IPv6, Alibaba Cloud
METADATA = frozenset({ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")})


def forbidden_address(ip: Address) -> str | None:
    """Why a notification must not go to `ip`, or None.

    An admin key must not turn a channel into a way to post to a cloud metadata service
    (link-local 169.254.169.254 and the addresses in METADATA) and read its answer back in
    the delivery error. Loopback and private networks stay allowed: alert routers inside
    the company network are a normal destination.
    """
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_link_local or ip in METADATA:
        return "a cloud metadata address"
    if ip.is_unspecified or ip.is_multicast:
        return "an address that is not a host"
    return None


def ip_literal(host: str) -> Address | None:
    """The address a URL's host spells out, or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@dataclass(frozen=True)
class Destination:
    """Where one attempt may connect: the addresses checked, or why none may be used.

    `addresses` is empty when the host is an IP literal or does not resolve: the request
    then goes to the URL as written (a literal names its one address; a name that does not
    resolve fails in the request, which reports it as usual).
    """

    addresses: tuple[str, ...] = ()
    refused: str | None = None


def destination(url: str) -> Destination:
    """Resolve `url`'s host once and check every address it resolves to now.

    Resolved at each attempt, so a name pointed at a forbidden address later is caught too,
    and the attempt connects to these very addresses (see `post`): a second lookup by the
    HTTP client could be answered differently than the one checked.
    """
    parts = httpx.URL(url)
    host = parts.host
    literal = ip_literal(host)
    if literal is not None:
        return Destination(refused=forbidden_address(literal))
    try:
        infos = socket.getaddrinfo(
            parts.raw_host.decode("ascii"),
            parts.port or (443 if parts.scheme == "https" else 80),
            type=socket.SOCK_STREAM,
        )
    except OSError:
        return Destination()
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%")[0]
        reason = forbidden_address(ipaddress.ip_address(address))
        if reason is not None:
            return Destination(refused=reason)
        if address not in addresses:
            addresses.append(address)
    return Destination(tuple(addresses))


def _requests(
    url: str, body: bytes, headers: dict[str, str], timeout: float, dest: Destination
) -> list[httpx.Request]:
    """One request per checked address, in the resolver's order, each pinned to its address.

    The Host header and the TLS server name stay the URL's host, so virtual hosts and
    certificate checks see the name the channel was configured with.
    """
    extensions: dict[str, Any] = {"timeout": httpx.Timeout(timeout).as_dict()}
    if not dest.addresses:
        return [httpx.Request("POST", url, content=body, headers=headers, extensions=extensions)]
    parts = httpx.URL(url)
    pinned_headers = {**headers, "Host": parts.netloc.decode("ascii")}
    pinned_extensions = {**extensions, "sni_hostname": parts.raw_host.decode("ascii")}
    return [
        httpx.Request(
            "POST",
            parts.copy_with(host=address),
            content=body,
            headers=pinned_headers,
            extensions=pinned_extensions,
        )
        for address in dest.addresses
    ]


def post(
    transport: httpx.BaseTransport, url: str, body: bytes, headers: dict[str, str], timeout: float
) -> Outcome:
    """POST once. 2xx delivered; 408, 425, 429, 5xx and network failures are worth retrying; the rest not.

    The attempt connects only to addresses checked by `destination`, trying the next one
    when an address refuses the connection, as a client given the name would.
    """
    dest = destination(url)
    if dest.refused is not None:
        return Outcome(False, retryable=False, error=f"not sent: the URL's host resolves to {dest.refused}")
    response: httpx.Response | None = None
    failure = ""
    for request in _requests(url, body, headers, timeout, dest):
        try:
            got = transport.handle_request(request)
            try:
                got.read()
            finally:
                got.close()
        except httpx.ConnectError as exc:
            failure = f"{type(exc).__name__}: {exc}"  # the next address, if any
            continue
        except httpx.TimeoutException as exc:
            return Outcome(False, error=f"timed out ({type(exc).__name__})")
        except httpx.HTTPError as exc:
            return Outcome(False, error=f"{type(exc).__name__}: {exc}")
        response = got
        break
    if response is None:
        return Outcome(False, error=failure)
    status = response.status_code
    if 200 <= status < 300:
        return Outcome(True, status=status)
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    snippet = response.text[:200].strip() if response.content else ""
    error = f"HTTP {status}" + (f": {snippet}" if snippet else "")
    if 300 <= status < 400:
        return Outcome(
            False, status=status, retryable=False, error=f"HTTP {status}: redirects are not followed"
        )
    retryable = status >= 500 or status in _RETRYABLE
    return Outcome(False, status=status, retryable=retryable, retry_after=retry_after, error=error)
