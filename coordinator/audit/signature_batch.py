"""Check many Ed25519 signatures, optionally across worker processes.

Signature checks dominate verification time (about 0.1 ms each with OpenSSL's Ed25519) and are
independent of each other, so they are the one part of an audit worth spreading over cores. Order
and content of the result do not depend on ``workers``.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Mapping, Sequence

from protocols.signing import VerifyKey

_MIN_JOBS_PER_WORKER = 2000  # below this, process start-up costs more than it saves


@dataclasses.dataclass(frozen=True)
class SignatureJob:
    """One signature to check: entry position, site, which key, domain tag, payload, signature."""

    seq: int
    site: str
    key_name: str
    domain: bytes
    payload: bytes
    signature: str
    what: str


_worker_keys: dict[str, VerifyKey] = {}


def _init_worker(raw_keys: Mapping[str, bytes]) -> None:
    global _worker_keys
    _worker_keys = {name: VerifyKey.from_raw(raw) for name, raw in raw_keys.items()}


def _check_chunk(chunk: Sequence[tuple[int, str, bytes, bytes, str]]) -> list[int]:
    bad = []
    for index, key_name, domain, payload, sig in chunk:
        if not _worker_keys[key_name].is_valid(sig, domain=domain, payload=payload):
            bad.append(index)
    return bad


def check_signatures(jobs: Sequence[SignatureJob], raw_keys: Mapping[str, bytes], *, workers: int = 1) -> list[SignatureJob]:
    """The jobs whose signature does not verify, in input order.

    ``workers`` > 1 uses that many forked processes when there are enough jobs; 0 means one per CPU.
    """
    workers = workers or (os.cpu_count() or 1)
    packed = [(i, j.key_name, j.domain, j.payload, j.signature) for i, j in enumerate(jobs)]
    workers = min(workers, max(1, len(packed) // _MIN_JOBS_PER_WORKER))
    if workers <= 1:
        _init_worker(raw_keys)
        bad = _check_chunk(packed)
    else:
        size = -(-len(packed) // (workers * 4))
        chunks = [packed[k : k + size] for k in range(0, len(packed), size)]
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(dict(raw_keys),)) as pool:
            bad = [i for part in pool.map(_check_chunk, chunks) for i in part]
    return [jobs[i] for i in sorted(bad)]
