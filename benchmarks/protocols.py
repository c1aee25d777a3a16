"""How the bench talks to a server: gRPC or HTTP, with or without system shared memory.

A workload's factory builds raw tensors (name, KServe datatype, array); this module turns
them into ``tritonclient`` inputs for the chosen protocol, or copies them into system
shared-memory regions that each in-flight request slot registers once and reuses. Regions are
unregistered and unlinked when the run ends, failed or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import ssl
from collections.abc import Mapping, Sequence

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpclient_aio
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import serialize_byte_tensor, triton_to_np_dtype

from s2i.client.transport import Connection
from s2i.server import ADMIN_KEY_HEADER as HTTP_ADMIN_KEY_HEADER

LOGGER = logging.getLogger(__name__)

PROTOCOLS = ("grpc", "http")
SHARED_MEMORY_MODES = ("none", "system")
# Largest region one request slot may map: a bench request is a clip or a few tensors, so a
# bigger one is a mistake (or a `--dynamic-size` typo), not a workload to copy into /dev/shm.
MAX_REGION_BYTES = 256 * 2**20
# Smallest input region: growing a region re-registers it, so start with room to spare.
MIN_REGION_BYTES = 64 * 2**10
# Names of the bench's regions (Triton's and the /dev/shm files'), so leftovers are recognisable.
REGION_PREFIX = "s2i-bench"

# A request's tensors: (name, KServe datatype, array).
Tensor = tuple[str, str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A server connection and how requests travel to it.

    Attributes:
        connection: Address (``host:port`` of the chosen protocol), headers, admin key, TLS.
        protocol: ``grpc`` or ``http`` (KServe v2 REST with binary tensors).
        shared_memory: ``none`` or ``system`` (POSIX shared memory: a server on this host only).
    """

    connection: Connection
    protocol: str = "grpc"
    shared_memory: str = "none"

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"`protocol` must be one of {list(PROTOCOLS)}, got {self.protocol!r}.")
        if self.shared_memory not in SHARED_MEMORY_MODES:
            raise ValueError(f"`shared_memory` must be one of {list(SHARED_MEMORY_MODES)}, got {self.shared_memory!r}.")

    @property
    def http(self) -> bool:
        """Whether requests go over HTTP."""
        return self.protocol == "http"

    def headers(self) -> dict[str, str] | None:
        """Headers of one call; the admin key under the header name the protocol expects."""
        headers = self.connection.call_headers()
        if not self.http or not headers:
            return headers
        key = headers.pop("triton-grpc-protocol-admin-key", None)
        if key is not None:
            headers[HTTP_ADMIN_KEY_HEADER] = key
        return headers

    def aio_client(self):
        """A new asyncio client of the protocol (an async context manager)."""
        if not self.http:
            return grpcclient_aio.InferenceServerClient(**self.connection.client_kwargs())
        context = None
        if self.connection.ssl:
            context = ssl.create_default_context(cafile=self.connection.root_certificates)
        return httpclient_aio.InferenceServerClient(
            self.connection.url, conn_timeout=self.connection.timeout_s, ssl=self.connection.ssl, ssl_context=context
        )

    def infer_options(self, timeout_s: float) -> dict:
        """Per-call options of ``infer`` (HTTP's deadline is the client session's)."""
        return {} if self.http else {"client_timeout": timeout_s}

    def call(self, method: str, *args, **kwargs):
        """One control call (metadata, config, statistics, shared-memory status) as JSON."""
        if self.http:
            return asyncio.run(self._http_call(method, *args, **kwargs))
        with grpcclient.InferenceServerClient(**self.connection.client_kwargs()) as client:
            return getattr(client, method)(*args, as_json=True, headers=self.headers(), **kwargs)

    async def _http_call(self, method: str, *args, **kwargs):
        async with self.aio_client() as client:
            return await getattr(client, method)(*args, headers=self.headers(), **kwargs)

    def inputs(self, tensors: Sequence[Tensor]) -> list:
        """The tensors as ``tritonclient`` inputs carrying their data (binary over HTTP)."""
        module = httpclient if self.http else grpcclient
        inputs = []
        for name, datatype, value in tensors:
            tensor = module.InferInput(name, list(value.shape), datatype)
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        return inputs

    def outputs(self, names: Sequence[str]) -> list:
        """Requested outputs returned in the response (binary over HTTP)."""
        module = httpclient if self.http else grpcclient
        return [module.InferRequestedOutput(name) for name in names]


def as_endpoint(target: str | Connection | Endpoint) -> Endpoint:
    """An :class:`Endpoint` for ``host:port`` (gRPC), a connection, or an endpoint."""
    if isinstance(target, Endpoint):
        return target
    return Endpoint(target if isinstance(target, Connection) else Connection(url=target))


def _payload(datatype: str, value: np.ndarray) -> bytes:
    """The bytes Triton expects for a tensor in shared memory (BYTES: 4-byte length prefixes)."""
    if datatype == "BYTES":
        return serialize_byte_tensor(value).item()
    return np.ascontiguousarray(value).tobytes()


class _Region:
    """One system shared-memory region, mapped here and registered with the server."""

    def __init__(self, name: str, byte_size: int) -> None:
        self.name = name
        self.byte_size = byte_size
        self.handle = shm.create_shared_memory_region(name, f"/{name}", byte_size)
        self.registered = False


class Regions:
    """The regions of one request slot: its inputs (grown on demand, bounded) and large outputs.

    Args:
        client: The slot's asyncio client.
        endpoint: The server (its headers carry the admin key the shared-memory API needs).
        tag: Unique per slot within this process.
        output_bytes: Output name -> the most bytes it can take; these come back through shared memory.
    """

    def __init__(self, client, endpoint: Endpoint, tag: str, output_bytes: Mapping[str, int]) -> None:
        self.client = client
        self.endpoint = endpoint
        self.tag = tag
        self.output_bytes = dict(output_bytes)
        self.input: _Region | None = None
        self.output: _Region | None = None
        self.generation = itertools.count()

    async def _open(self, kind: str, byte_size: int) -> _Region:
        if byte_size > MAX_REGION_BYTES:
            raise ValueError(
                f"`--shared-memory` {kind} region would need {byte_size} bytes; the limit is {MAX_REGION_BYTES}."
            )
        region = _Region(f"{REGION_PREFIX}-{os.getpid()}-{self.tag}-{kind}{next(self.generation)}", byte_size)
        try:
            await self.client.register_system_shared_memory(
                region.name, f"/{region.name}", byte_size, headers=self.endpoint.headers()
            )
            region.registered = True
        except BaseException:
            shm.destroy_shared_memory_region(region.handle)
            raise
        return region

    async def _release(self, region: _Region | None) -> None:
        if region is None:
            return
        try:
            if region.registered:
                await self.client.unregister_system_shared_memory(region.name, headers=self.endpoint.headers())
        except Exception as e:  # the run's own error matters more; the file is unlinked below anyway
            LOGGER.warning("Could not unregister shared-memory region %s: %s", region.name, str(e)[:200])
        finally:
            shm.destroy_shared_memory_region(region.handle)

    async def inputs(self, tensors: Sequence[Tensor]) -> list:
        """The tensors copied into this slot's input region, as inputs that point at it."""
        payloads = [_payload(datatype, value) for _, datatype, value in tensors]
        needed = sum(len(payload) for payload in payloads)
        if self.input is None or self.input.byte_size < needed:
            old, self.input = self.input, None
            await self._release(old)
            grown = max(MIN_REGION_BYTES, 2 * (old.byte_size if old else 0))
            self.input = await self._open("in", max(needed, min(grown, MAX_REGION_BYTES)))
        module = httpclient if self.endpoint.http else grpcclient
        inputs, offset = [], 0
        for (name, datatype, value), payload in zip(tensors, payloads, strict=True):
            shm.set_shared_memory_region(self.input.handle, [np.frombuffer(payload, np.uint8)], offset=offset)
            tensor = module.InferInput(name, list(value.shape), datatype)
            tensor.set_shared_memory(self.input.name, len(payload), offset=offset)
            inputs.append(tensor)
            offset += len(payload)
        return inputs

    async def outputs(self, names: Sequence[str]) -> list:
        """Requested outputs: the large ones into this slot's output region, the others in the response."""
        if self.output is None and self.output_bytes:
            self.output = await self._open("out", sum(self.output_bytes.values()))
        module = httpclient if self.endpoint.http else grpcclient
        requested = []
        for name in names:
            output = module.InferRequestedOutput(name)
            if name in self.output_bytes:
                output.set_shared_memory(self.output.name, self.output_bytes[name], offset=self._offset(name))
            requested.append(output)
        return requested

    def _offset(self, name: str) -> int:
        offsets = itertools.accumulate(self.output_bytes.values(), initial=0)
        return dict(zip(self.output_bytes, offsets, strict=False))[name]

    def read(self, result, name: str) -> np.ndarray | None:
        """Output ``name`` of ``result``, from the output region when it was put there (a copy)."""
        if name not in self.output_bytes or self.output is None:
            return result.as_numpy(name)
        output = result.get_output(name)
        if output is None:
            return None
        if isinstance(output, dict):  # HTTP: the output's JSON
            datatype, shape = output["datatype"], list(output["shape"])
        else:
            datatype, shape = output.datatype, list(output.shape)
        value = shm.get_contents_as_numpy(
            self.output.handle, triton_to_np_dtype(datatype), shape, offset=self._offset(name)
        )
        return np.array(value, copy=True)  # the region is reused by the slot's next request

    async def close(self) -> None:
        """Unregister and unlink every region of the slot."""
        for region in (self.input, self.output):
            await self._release(region)
        self.input = self.output = None


class SharedResponse:
    """A response whose large outputs are read from the slot's output region (``as_numpy`` as usual)."""

    def __init__(self, result, regions: Regions) -> None:
        self.result = result
        self.regions = regions

    def as_numpy(self, name: str) -> np.ndarray | None:
        """Output ``name`` as an array (``None`` when absent)."""
        return self.regions.read(self.result, name)


class RegionPool:
    """Request slots' regions, leased one per in-flight request and reused: registered once per slot."""

    def __init__(self, client, endpoint: Endpoint, output_bytes: Mapping[str, int]) -> None:
        self.client = client
        self.endpoint = endpoint
        self.output_bytes = output_bytes
        self.free: list[Regions] = []
        self.every: list[Regions] = []

    @contextlib.asynccontextmanager
    async def lease(self):
        """A slot's regions for one request; back to the pool afterwards."""
        if self.free:
            regions = self.free.pop()
        else:
            regions = Regions(self.client, self.endpoint, f"{id(self):x}-{len(self.every)}", self.output_bytes)
            self.every.append(regions)
        try:
            yield regions
        finally:
            self.free.append(regions)

    async def close(self) -> None:
        """Unregister and unlink every slot's regions."""
        for regions in self.every:
            await regions.close()
