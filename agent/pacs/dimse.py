"""A DIMSE client on pynetdicom: C-FIND to list, C-GET or C-MOVE to retrieve, C-STORE to push.

C-GET receives the instances on the same association, so every storage SOP class we may receive
is proposed with the SCP role (role selection negotiation). C-MOVE makes the PACS open a new
association to *our* storage SCP, which listens on ``move_port`` and must be registered at the PACS
under our calling AE title; the SCP accepts only associations from the PACS's AE title.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable, Sequence

from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom import _config as _pynetdicom_config
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from agent.config import PacsEndpoint, PacsFilters, RetrieveMethod
from agent.pacs.query import InstanceRef, SeriesRef, date_range_value, server_modality
from protocols.errors import AuthenticationError, TransportError

log = logging.getLogger(__name__)

# pynetdicom's standard event handlers log C-FIND/C-GET/C-MOVE identifiers (patient names, IDs) and
# every C-STORE's SOP Instance UID; whatever logging the host process configures, none of that may
# reach a log. Its warnings and errors are still logged.
_pynetdicom_config.LOG_HANDLER_LEVEL = "none"
_pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
_pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False

# Received as-is so the PACS need not transcode; anything else is negotiated down to these.
ACCEPTED_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]
_MAX_CONTEXTS = 128
# C-GET: uncompressed in one context (any PACS can convert between them), each compressed syntax alone.
_SYNTAX_GROUPS = [[ExplicitVRLittleEndian, ImplicitVRLittleEndian]] + [[ts] for ts in ACCEPTED_SYNTAXES[2:]]
# SOP classes that fit one association next to the C-GET context (also how many common storage
# classes are proposed when C-FIND returned no SOP classes).
_CLASSES_PER_ASSOC = (_MAX_CONTEXTS - 1) // len(_SYNTAX_GROUPS)
_SUCCESS, _PENDING = 0x0000, (0xFF00, 0xFF01)


class DimseClient:
    """Talks to one DICOM server (C-ECHO, C-FIND, C-GET/C-MOVE, C-STORE)."""

    def __init__(
        self,
        endpoint: PacsEndpoint,
        *,
        retrieve: RetrieveMethod = RetrieveMethod.C_GET,
        move_port: int | None = None,
        move_bind_host: str = "0.0.0.0",
    ) -> None:
        if endpoint.host is None or endpoint.port is None or endpoint.called_ae is None:
            raise ValueError("DimseClient needs an endpoint with host, port and called_ae")
        if retrieve is RetrieveMethod.C_MOVE and move_port is None:
            raise ValueError("C-MOVE needs move_port")
        self._endpoint = endpoint
        self._retrieve_method = retrieve
        self._move_port = move_port
        self._move_bind_host = move_bind_host
        self._password = endpoint.resolve_password() if endpoint.username else None
        self._scp: Any = None
        self._scp_lock = threading.Lock()
        self._move_sink: Callable[[bytes], None] | None = None
        self._find_assoc: Any = None
        self._find_lock = threading.Lock()

    # -- association helpers ------------------------------------------------------------------
    def _ae(self) -> AE:
        ae = AE(ae_title=self._endpoint.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self._endpoint.timeout_s
        return ae

    def _associate(self, ae: AE, *, ext_neg: list[Any] | None = None, evt_handlers: list[Any] | None = None) -> Any:
        ext = list(ext_neg or [])
        if self._endpoint.username:
            identity = UserIdentityNegotiation()
            identity.user_identity_type = 2  # username and passcode
            identity.primary_field = self._endpoint.username.encode()
            identity.secondary_field = (self._password or "").encode()
            ext.append(identity)
        ep = self._endpoint
        assoc = ae.associate(ep.host, ep.port, ae_title=ep.called_ae, ext_neg=ext or None, evt_handlers=evt_handlers)
        if assoc.is_established:
            return assoc
        where = f"{ep.called_ae}@{ep.host}:{ep.port}"
        if assoc.is_rejected:
            raise AuthenticationError(
                f"DICOM server {where} rejected the association from AE title {ep.calling_ae}; expected "
                "our AE title (and host) to be registered at the PACS: check calling_ae and called_ae"
            )
        raise TransportError(f"cannot associate with DICOM server {where}; check that it runs and host/port/called_ae")

    # -- find ---------------------------------------------------------------------------------
    def find_series(self, filters: PacsFilters) -> list[SeriesRef]:
        """C-FIND studies (date range), then their series (modality), in the study root model.

        Raises
        ------
        AuthenticationError
            If the server rejects our AE title or refuses queries from it.
        TransportError
            If the server cannot be reached or a query fails.
        """
        with self._find_lock:
            assoc = self._find_association()
            study_q = Dataset()
            study_q.QueryRetrieveLevel = "STUDY"
            study_q.StudyInstanceUID = ""
            study_q.StudyDate = date_range_value(filters) or ""
            studies = [(str(d.StudyInstanceUID), str(d.get("StudyDate", "") or "")) for d in self._find(assoc, study_q)]
            found = []
            for study_uid, study_date in studies:
                q = Dataset()
                q.QueryRetrieveLevel = "SERIES"
                q.StudyInstanceUID = study_uid
                q.SeriesInstanceUID = ""
                q.Modality = server_modality(filters) or ""
                q.SeriesDescription = ""
                for d in self._find(assoc, q):
                    found.append(
                        SeriesRef(
                            study_uid,
                            str(d.SeriesInstanceUID),
                            str(d.get("Modality", "") or ""),
                            str(d.get("SeriesDescription", "") or ""),
                            study_date,
                        )
                    )
            return found

    def find_instances(self, series: SeriesRef) -> list[InstanceRef]:
        """C-FIND the instances of one series (with their SOP class, for C-GET negotiation).

        Raises
        ------
        AuthenticationError, TransportError
            As for :meth:`find_series`.
        """
        with self._find_lock:
            assoc = self._find_association()
            q = Dataset()
            q.QueryRetrieveLevel = "IMAGE"
            q.StudyInstanceUID = series.study_uid
            q.SeriesInstanceUID = series.series_uid
            q.SOPInstanceUID = ""
            q.SOPClassUID = ""
            return [
                InstanceRef(series.study_uid, series.series_uid, str(d.SOPInstanceUID), str(d.get("SOPClassUID", "") or ""))
                for d in self._find(assoc, q)
            ]

    def _find_association(self) -> Any:
        # One association for all queries of a sync: each new one costs ~0.1 s in pynetdicom.
        if self._find_assoc is None or not self._find_assoc.is_established:
            ae = self._ae()
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
            self._find_assoc = self._associate(ae)
        return self._find_assoc

    def _find(self, assoc: Any, query: Dataset) -> list[Dataset]:
        results = []
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            code = _status_code(status, assoc, "C-FIND", self._endpoint)
            if code in _PENDING and identifier is not None:
                results.append(identifier)
            elif code == _SUCCESS:
                break
            else:
                _raise_status("C-FIND", code, self._endpoint)
        return results

    # -- retrieve -----------------------------------------------------------------------------
    def retrieve(self, instances: Sequence[InstanceRef], sink: Callable[[bytes], None], *, whole_series: bool = False) -> None:
        """Retrieve instances (C-GET or C-MOVE, one association per batch) into ``sink``.

        With ``whole_series`` (all ``instances`` are one complete series) one series-level request
        replaces one request per instance.

        Raises
        ------
        AuthenticationError, TransportError
            If the association or a retrieval fails; instances already handed to ``sink`` stay.
        """
        if not instances:
            return
        if self._retrieve_method is RetrieveMethod.C_GET:
            self._retrieve_c_get(instances, sink, whole_series)
        else:
            self._retrieve_c_move(instances, sink, whole_series)

    def _retrieve_c_get(self, instances: Sequence[InstanceRef], sink: Callable[[bytes], None], whole_series: bool) -> None:
        # The PACS picks one transfer syntax per presentation context and some (Orthanc) cannot
        # transcode, so each syntax gets a context of its own; that caps the SOP classes per
        # association, hence one association per group of classes.
        by_class: dict[str, list[InstanceRef]] = {}
        for ref in instances:
            by_class.setdefault(ref.sop_class_uid, []).append(ref)
        classes = sorted(by_class)
        if whole_series and len(classes) <= _CLASSES_PER_ASSOC:
            self._c_get_group(classes, list(instances), sink, whole_series=True)
            return
        for start in range(0, len(classes), _CLASSES_PER_ASSOC):
            group = classes[start : start + _CLASSES_PER_ASSOC]
            self._c_get_group(group, [r for uid in group for r in by_class[uid]], sink)

    def _c_get_group(
        self, classes: list[str], instances: list[InstanceRef], sink: Callable[[bytes], None], *, whole_series: bool = False
    ) -> None:
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        storage = [uid for uid in classes if uid] or [cx.abstract_syntax for cx in StoragePresentationContexts[:_CLASSES_PER_ASSOC]]
        roles = []
        for uid in storage:
            for syntaxes in _SYNTAX_GROUPS:
                ae.add_requested_context(uid, syntaxes)
            roles.append(build_role(uid, scp_role=True))
        errors: list[BaseException] = []
        handler = _store_handler(sink, errors)
        assoc = self._associate(ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, handler)])
        try:
            if whole_series:
                self._send_retrieve(assoc, instances[0], errors, move=False, expected=len(instances))
            else:
                for ref in instances:
                    self._send_retrieve(assoc, ref, errors, move=False)
        finally:
            assoc.release()

    def _retrieve_c_move(self, instances: Sequence[InstanceRef], sink: Callable[[bytes], None], whole_series: bool) -> None:
        errors: list[BaseException] = []
        self._ensure_move_scp(sink, errors)
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = self._associate(ae)
        try:
            if whole_series:
                self._send_retrieve(assoc, instances[0], errors, move=True, expected=len(instances))
            else:
                for ref in instances:
                    self._send_retrieve(assoc, ref, errors, move=True)
        finally:
            assoc.release()

    def _send_retrieve(
        self, assoc: Any, ref: InstanceRef, errors: list[BaseException], *, move: bool, expected: int | None = None
    ) -> None:
        """One C-GET/C-MOVE for an instance, or for its whole series when ``expected`` is given."""
        q = Dataset()
        q.QueryRetrieveLevel = "IMAGE" if expected is None else "SERIES"
        q.StudyInstanceUID = ref.study_uid
        q.SeriesInstanceUID = ref.series_uid
        if expected is None:
            q.SOPInstanceUID = ref.sop_uid
        if move:
            responses = assoc.send_c_move(q, self._endpoint.calling_ae, StudyRootQueryRetrieveInformationModelMove)
        else:
            responses = assoc.send_c_get(q, StudyRootQueryRetrieveInformationModelGet)
        op = "C-MOVE" if move else "C-GET"
        final = None
        for status, _ in responses:
            code = _status_code(status, assoc, op, self._endpoint)
            if code not in _PENDING:
                final = (code, int(status.get("NumberOfCompletedSuboperations", 0) or 0) if status else 0)
        if errors:
            raise TransportError(f"{op}: a received instance could not be staged; the next sync retries it") from errors[0]
        if final is None:
            raise TransportError(f"{op}: the DICOM server closed the association before the final status")
        code, completed = final
        if code != _SUCCESS or completed < (expected or 1):
            _raise_status(op, code, self._endpoint, completed=completed)

    def _ensure_move_scp(self, sink: Callable[[bytes], None], errors: list[BaseException]) -> None:
        with self._scp_lock:
            self._move_sink = sink
            self._move_errors = errors
            if self._scp is not None:
                return
            ae = self._ae()
            ae.require_calling_aet = [self._endpoint.called_ae]
            for cx in StoragePresentationContexts:
                ae.add_supported_context(cx.abstract_syntax, ACCEPTED_SYNTAXES)

            def forward(event: Any) -> int:
                return _store_handler(self._move_sink, self._move_errors)(event)  # type: ignore[arg-type]

            self._scp = ae.start_server(
                (self._move_bind_host, self._move_port), block=False, evt_handlers=[(evt.EVT_C_STORE, forward)]
            )

    # -- push and ping ------------------------------------------------------------------------
    def store(self, datasets: Iterable[Dataset]) -> int:
        """C-STORE each dataset on one association; returns how many were stored.

        Raises
        ------
        AuthenticationError, TransportError
            If the association fails or the server refuses an instance.
        """
        items = list(datasets)
        if not items:
            return 0
        ae = self._ae()
        for uid in sorted({str(ds.SOPClassUID) for ds in items}):
            syntaxes = sorted({str(ds.file_meta.TransferSyntaxUID) for ds in items if str(ds.SOPClassUID) == uid})
            ae.add_requested_context(uid, syntaxes)
        assoc = self._associate(ae)
        try:
            for ds in items:
                status = assoc.send_c_store(ds)
                code = _status_code(status, assoc, "C-STORE", self._endpoint)
                if code != _SUCCESS and not 0xB000 <= code <= 0xBFFF:
                    _raise_status("C-STORE", code, self._endpoint)
        finally:
            assoc.release()
        return len(items)

    def ping(self) -> None:
        """C-ECHO.

        Raises
        ------
        AuthenticationError, TransportError
            If the server is unreachable, rejects us, or fails the echo.
        """
        ae = self._ae()
        ae.add_requested_context(Verification)
        assoc = self._associate(ae)
        try:
            code = _status_code(assoc.send_c_echo(), assoc, "C-ECHO", self._endpoint)
            if code != _SUCCESS:
                _raise_status("C-ECHO", code, self._endpoint)
        finally:
            assoc.release()

    def close(self) -> None:
        """Release the query association and stop the C-MOVE storage SCP, if started."""
        with self._find_lock:
            if self._find_assoc is not None and self._find_assoc.is_established:
                self._find_assoc.release()
            self._find_assoc = None
        with self._scp_lock:
            if self._scp is not None:
                self._scp.shutdown()
                self._scp = None


def _store_handler(sink: Callable[[bytes], None], errors: list[BaseException]) -> Callable[[Any], int]:
    def handle(event: Any) -> int:
        try:
            sink(bytes(event.encoded_dataset()))
        except Exception as exc:  # noqa: BLE001 - reported to the requesting thread, not lost
            errors.append(exc)
            return 0xA700  # out of resources: the PACS counts a failed sub-operation
        return _SUCCESS

    return handle


def _status_code(status: Dataset | None, assoc: Any = None, op: str = "", ep: PacsEndpoint | None = None) -> int:
    if status is not None and "Status" in status:
        return int(status.Status)
    if assoc is not None and ep is not None and _aborted(assoc):
        # Servers (Orthanc among them) accept the association, then abort it when the calling AE
        # title may not use the service: that is a permission problem, not a network one.
        raise AuthenticationError(
            f"{op} on {ep.called_ae}@{ep.host}:{ep.port}: the server aborted the association, which PACS do "
            f"when AE title {ep.calling_ae} may not use {op}; register it at the PACS with find/get/move rights"
        )
    raise TransportError("the DICOM server did not answer in time (no status); check the network and timeout_s")


def _aborted(assoc: Any, wait_s: float = 2.0) -> bool:
    # A missing status arrives slightly before the association thread marks the abort.
    deadline = time.monotonic() + wait_s
    while not assoc.is_aborted and assoc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(assoc.is_aborted)


def _raise_status(op: str, code: int, ep: PacsEndpoint, *, completed: int | None = None) -> None:
    where = f"{ep.called_ae}@{ep.host}:{ep.port}"
    detail = f" after {completed} completed sub-operation(s)" if completed is not None else ""
    if code in (0x0124, 0xA801):  # refused: not authorised; move destination unknown
        raise AuthenticationError(
            f"{op} on {where} refused for AE title {ep.calling_ae} (status 0x{code:04X}); the PACS must allow "
            "this AE title to query and retrieve (and, for C-MOVE, know its host and port)"
        )
    raise TransportError(f"{op} on {where} failed with status 0x{code:04X}{detail}; see the PACS log")
