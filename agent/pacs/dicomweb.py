"""A small DICOMweb client: QIDO-RS to find, WADO-RS to retrieve, STOW-RS to push (stdlib only).

Credentials go in an ``Authorization`` header built per request; neither the header nor the
password is ever logged or put in an exception message. Identifiers (UIDs) are not logged either.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Callable, Iterable, Sequence

from agent.config import PacsEndpoint, PacsFilters
from agent.pacs.multipart import parse_multipart
from agent.pacs.query import InstanceRef, SeriesRef, date_range_value, server_modality
from protocols.errors import AuthenticationError, TransportError

log = logging.getLogger(__name__)

QIDO_PAGE = 500
_RETRIES = 2
_DICOM_MULTIPART = 'multipart/related; type="application/dicom"'

# DICOM JSON tags used from QIDO-RS results.
_STUDY_UID, _SERIES_UID, _SOP_UID, _SOP_CLASS = "0020000D", "0020000E", "00080018", "00080016"
_MODALITY, _SERIES_DESC, _STUDY_DATE = "00080060", "0008103E", "00080020"


class DicomWebClient:
    """Talks to one DICOMweb service (base URL such as ``http://pacs:8042/dicom-web``)."""

    def __init__(self, endpoint: PacsEndpoint, *, opener: Callable[..., Any] | None = None) -> None:
        if endpoint.url is None:
            raise ValueError("DicomWebClient needs an endpoint with a url")
        self._endpoint = endpoint
        self._base = endpoint.url
        self._auth = _basic_auth(endpoint)
        cafile = str(endpoint.ca_file) if endpoint.ca_file else None
        self._ssl = ssl.create_default_context(cafile=cafile) if self._base.startswith("https://") else None
        self._open = opener or urllib.request.urlopen

    # -- find ---------------------------------------------------------------------------------
    def find_series(self, filters: PacsFilters) -> list[SeriesRef]:
        """QIDO-RS series search with the filters the server can apply (the caller re-checks them).

        Raises
        ------
        AuthenticationError
            If the server rejects the credentials.
        TransportError
            If the server cannot be reached or answers with an error.
        """
        # One includefield per attribute: some servers (Orthanc) do not split comma lists.
        params: list[tuple[str, str]] = [("includefield", tag) for tag in (_STUDY_DATE, _SERIES_DESC, _MODALITY)]
        modality = server_modality(filters)
        if modality:
            params.append(("Modality", modality))
        dates = date_range_value(filters)
        if dates:
            params.append(("StudyDate", dates))
        found = []
        for item in self._paged("/series", params):
            found.append(
                SeriesRef(
                    study_uid=_value(item, _STUDY_UID),
                    series_uid=_value(item, _SERIES_UID),
                    modality=_value(item, _MODALITY),
                    description=_value(item, _SERIES_DESC),
                    study_date=_value(item, _STUDY_DATE),
                )
            )
        return [s for s in found if s.study_uid and s.series_uid]

    def find_instances(self, series: SeriesRef) -> list[InstanceRef]:
        """QIDO-RS instances of one series.

        Raises
        ------
        AuthenticationError, TransportError
            As for :meth:`find_series`.
        """
        path = f"/studies/{_q(series.study_uid)}/series/{_q(series.series_uid)}/instances"
        refs = []
        for item in self._paged(path, []):
            sop = _value(item, _SOP_UID)
            if sop:
                refs.append(InstanceRef(series.study_uid, series.series_uid, sop, _value(item, _SOP_CLASS)))
        return refs

    # -- retrieve -----------------------------------------------------------------------------
    def retrieve(self, instances: Sequence[InstanceRef], sink: Callable[[bytes], None], *, whole_series: bool = False) -> None:
        """WADO-RS instances in their original transfer syntax; hand each Part 10 file to ``sink``.

        With ``whole_series`` (all ``instances`` are one complete series) one series request
        replaces one request per instance.

        Raises
        ------
        AuthenticationError, TransportError
            As for :meth:`find_series`; instances already handed to ``sink`` stay delivered.
        """
        if whole_series and instances:
            ref = instances[0]
            path = f"/studies/{_q(ref.study_uid)}/series/{_q(ref.series_uid)}"
            body, content_type = self._request("GET", path, accept=f"{_DICOM_MULTIPART}; transfer-syntax=*")
            for part in parse_multipart(body, content_type):
                sink(part)
            return
        for ref in instances:
            path = f"/studies/{_q(ref.study_uid)}/series/{_q(ref.series_uid)}/instances/{_q(ref.sop_uid)}"
            body, content_type = self._request("GET", path, accept=f"{_DICOM_MULTIPART}; transfer-syntax=*")
            parts = parse_multipart(body, content_type)
            if len(parts) != 1:
                raise TransportError(f"WADO-RS returned {len(parts)} parts for one instance; expected exactly 1")
            sink(parts[0])

    # -- push ---------------------------------------------------------------------------------
    def store(self, files: Iterable[bytes]) -> int:
        """STOW-RS the given Part 10 files in one request; returns how many were sent.

        Raises
        ------
        AuthenticationError, TransportError
            If the server refuses the request or reports a failed instance.
        """
        boundary = uuid.uuid4().hex
        chunks, count = [], 0
        for data in files:
            chunks += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), data, b"\r\n"]
            count += 1
        if count == 0:
            return 0
        chunks.append(f"--{boundary}--\r\n".encode())
        content_type = f'{_DICOM_MULTIPART}; boundary="{boundary}"'
        body, _ = self._request("POST", "/studies", data=b"".join(chunks), content_type=content_type, accept="application/dicom+json")
        if body:
            reply = json.loads(body)
            failed = reply.get("00081198", {}).get("Value", [])  # Failed SOP Sequence
            if failed:
                raise TransportError(f"STOW-RS: the server refused {len(failed)} of {count} instances")
        return count

    def ping(self) -> None:
        """A cheap authenticated request (one study, if any) to check reachability and credentials.

        Raises
        ------
        AuthenticationError, TransportError
            If the service is unreachable or refuses the credentials.
        """
        self._request("GET", "/studies", params=[("limit", "1")], accept="application/dicom+json")

    # -- HTTP ---------------------------------------------------------------------------------
    def _paged(self, path: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        offset = 0
        while True:
            page_params = params + [("limit", str(QIDO_PAGE)), ("offset", str(offset))]
            body, _ = self._request("GET", path, params=page_params, accept="application/dicom+json")
            page = json.loads(body) if body.strip() else []
            if not isinstance(page, list):
                raise TransportError(f"QIDO-RS {path.split('/')[-1]} returned {type(page).__name__}; expected a JSON list")
            results.extend(page)
            if len(page) < QIDO_PAGE:
                return results
            offset += len(page)

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: list[tuple[str, str]] | None = None,
        data: bytes | None = None,
        content_type: str | None = None,
        accept: str,
    ) -> tuple[bytes, str]:
        url = self._base + path + (("?" + urllib.parse.urlencode(params)) if params else "")
        for attempt in range(_RETRIES + 1):
            req = urllib.request.Request(url, data=data, method=method)
            req.add_header("Accept", accept)
            if content_type:
                req.add_header("Content-Type", content_type)
            if self._auth:
                req.add_header("Authorization", self._auth)
            try:
                with self._open(req, timeout=self._endpoint.timeout_s, context=self._ssl) as resp:
                    return resp.read(), resp.headers.get("Content-Type", "")
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 403):
                    raise AuthenticationError(
                        f"DICOMweb server {self._base} refused the credentials (HTTP {exc.code}) for "
                        f"user {self._endpoint.username or '(none)'}; expected a registered user with read "
                        "access: check username and password/password_env in the site config"
                    ) from exc  # HTTPError keeps the URL and response headers, never our request headers
                if exc.code >= 500 and attempt < _RETRIES:
                    log.warning("DICOMweb %s %s: HTTP %d, retrying", method, path.split("/")[1], exc.code)
                    time.sleep(0.5 * (attempt + 1))
                    continue
                raise TransportError(
                    f"DICOMweb {method} on {self._base} failed with HTTP {exc.code} {exc.reason}; "
                    "check the URL (it must end at the DICOMweb root, e.g. /dicom-web) and the server log"
                ) from exc
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                if isinstance(reason, ssl.SSLCertVerificationError):
                    # Not transient: retrying cannot make an untrusted certificate trusted.
                    raise TransportError(
                        f"the TLS certificate of DICOMweb server {self._base} is not trusted ({reason.verify_message}); "
                        "set ca_file in the PACS source to the hospital's CA certificate (PEM)"
                    ) from exc
                if attempt < _RETRIES:
                    log.warning("DICOMweb %s: %s, retrying", method, reason)
                    time.sleep(0.5 * (attempt + 1))
                    continue
                raise TransportError(
                    f"cannot reach DICOMweb server {self._base}: {reason}; check that it runs and the "
                    "url in the site config"
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover


def _basic_auth(endpoint: PacsEndpoint) -> str | None:
    if endpoint.username is None:
        return None
    password = endpoint.resolve_password() or ""
    return "Basic " + base64.b64encode(f"{endpoint.username}:{password}".encode()).decode()


def _value(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    first = values[0]
    if isinstance(first, dict):  # PN: {"Alphabetic": ...}
        first = first.get("Alphabetic", "")
    return str(first)


def _q(uid: str) -> str:
    return urllib.parse.quote(uid, safe="")
