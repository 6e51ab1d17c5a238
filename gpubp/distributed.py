"""Data-parallel training: every rank backpropagates its shard of each global mini-batch.

Launch one process per device with MPI (``mpiexec -n N python train.py``); each calls :func:`init`, which
gives its :class:`Communicator` (rank, world size, device: ``cuda:(local_rank % visible GPUs)`` on GPUs, else
the CPU), and passes it to ``Network.fit(..., distributed=comm)``, which trains on ``comm.device``. The gradient of the mean cost over a global batch of m
rows split into shards Sᵣ is

    ∂C/∂θ = (1/m) Σₓ ∂Cₓ/∂θ = (1/m) Σᵣ Σ_{x∈Sᵣ} ∂Cₓ/∂θ,

so each rank fills the flat gradient buffer with its shard's SUM (BP3/BP4 before the 1/m), one allreduce
adds the ranks' sums, and the optimizer scales by the global 1/m: the step equals the single-process step
whatever the shard sizes.

Transport is not written here: CPU arrays go through MPI (mpi4py), GPU arrays through NCCL (CuPy's
bindings) on the current stream with no host sync. The NCCL communicator is bootstrapped over MPI: rank 0
makes the unique id and broadcasts it, as ChainerMN did.

Failure handling (no rank may hang when another one dies):

* with more than one rank, :func:`init` wraps ``sys.excepthook``: an uncaught exception on any rank prints
  its traceback with the rank and calls ``MPI.COMM_WORLD.Abort``, and ``mpiexec`` ends every rank;
* every MPI collective here is non-blocking, waited on with a deadline (``timeout`` seconds, default 60):
  a rank that waits longer (its peer exited without aborting, e.g. by ``sys.exit``, or is stuck) prints
  which collective timed out and aborts the job. Waits spin for the first second (as blocking MPI does),
  then poll every 10 ms so that a waiting rank leaves the CPU to the others;
* NCCL collectives run on the GPU and cannot be timed out from the host; a dead peer is still caught by the
  abort above, which ``mpiexec`` turns into the end of every rank.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from typing import Any, Callable, NoReturn
from uuid import UUID

import numpy as np

from .backend import (DeviceError, cuda_unavailable_reason, is_device_array, parse_device, to_host,
                      visible_gpus)

Array = Any
#: environment variables in which MPI launchers (MPICH/Hydra, Open MPI, PMIx) give a process its rank
RANK_ENV = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
SIZE_ENV = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
#: how long a wait spins before it starts sleeping between polls, and the poll interval after that
SPIN_SECONDS = 1.0
POLL_SECONDS = 0.01
#: pause between printing why a rank aborts and MPI_Abort, so mpiexec forwards the message before it kills
ABORT_GRACE_SECONDS = 0.2
_DIGEST_BYTES = 32 + 8 + 8  # sha256, float64 sum, element count

_world: Communicator | None = None


def shard_range(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rows [lo, hi) of a batch of ``n`` rows for ``rank`` of ``size``: contiguous, sizes differ by ≤ 1."""
    if size > n:
        raise ValueError(f"a global batch of {n} rows cannot be split over {size} ranks: every rank needs "
                         f"at least one row (use batch_size >= {size} and a data set whose last partial "
                         f"batch, len(X) % batch_size, is 0 or >= {size})")
    q, r = divmod(n, size)
    lo = rank * q + min(rank, r)
    return lo, lo + q + (1 if rank < r else 0)


class Communicator:
    """This process's place in the job (``rank`` of ``size``, ``device``) and the collectives fit needs.

    Built by :func:`init`. With no MPI (one process, mpi4py absent) every collective is the identity.
    """

    def __init__(self, rank: int, size: int, device: str, timeout: float | None,
                 mpi_comm: Any = None, nccl_comm: Any = None, local_rank: int = 0) -> None:
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self.device = device
        self.timeout = timeout
        self._mpi = mpi_comm
        self._nccl = nccl_comm
        self._side_stream: Any = None  # the NCCL stream of allreduce_sum_start, made on first use

    def __repr__(self) -> str:
        transport = "none" if self._mpi is None else ("MPI+NCCL" if self._nccl is not None else "MPI")
        return (f"Communicator(rank={self.rank}, size={self.size}, device={self.device!r}, "
                f"transport={transport!r})")

    # ---- work split ---------------------------------------------------------------------------------
    def shard(self, n: int) -> tuple[int, int]:
        """This rank's rows [lo, hi) of a global batch of ``n`` rows (ValueError if size > n)."""
        return shard_range(n, self.rank, self.size)

    # ---- collectives --------------------------------------------------------------------------------
    def allreduce_sum(self, array: Array) -> None:
        """array ← Σ over ranks of array, in place."""
        self.allreduce_sum_start(array)()

    @property
    def overlaps_compute(self) -> bool:
        """Whether a started allreduce runs while the rank computes on (NCCL on its own stream: yes;
        MPI on the CPU progresses only inside MPI calls: no). fit splits the gradient into per-layer
        buckets only where it does; an instance may set it to force either way."""
        return self.__dict__.get("_overlaps", self._nccl is not None)

    @overlaps_compute.setter
    def overlaps_compute(self, value: bool) -> None:
        self.__dict__["_overlaps"] = bool(value)

    def allreduce_sum_start(self, array: Array) -> Callable[[], None]:
        """Start array ← Σ over ranks of array, in place; returns ``wait``, which completes it.

        MPI: a non-blocking Iallreduce, completed (with the deadline) by ``wait``. NCCL: the sum runs on a
        side stream once the current stream's queued work is done, and ``wait`` makes the current stream
        wait for it, so work queued in between (the rest of the backward pass) overlaps the transfer; no
        host sync either way.
        """
        _check_contiguous(array, "allreduce_sum")
        if self._mpi is None:
            return _done
        if not is_device_array(array):
            from mpi4py import MPI

            request = self._mpi.Iallreduce(MPI.IN_PLACE, array, op=MPI.SUM)
            return lambda: self._wait(request, "allreduce_sum")
        import cupy
        from cupy.cuda import nccl

        ptr = self._device_pointer(array, "allreduce_sum")
        compute = cupy.cuda.get_current_stream()
        if self._side_stream is None:
            self._side_stream = cupy.cuda.Stream(non_blocking=True)
        side = self._side_stream
        side.wait_event(compute.record())
        self._nccl.allReduce(ptr, ptr, array.size, _nccl_dtype(array), nccl.NCCL_SUM, side.ptr)
        finished = side.record()
        return lambda: compute.wait_event(finished)

    def broadcast(self, array: Array, root: int = 0) -> None:
        """array ← rank ``root``'s array, in place (shape and dtype checked across ranks first)."""
        _check_contiguous(array, "broadcast")
        if not isinstance(root, int) or not 0 <= root < self.size:
            raise ValueError(f"root must be a rank in 0…{self.size - 1}; got {root!r}")
        if self._mpi is None:
            return
        meta = np.array([array.size, ord(np.dtype(array.dtype).char)], dtype=np.int64)
        metas = self._allgather(meta, "broadcast (shape check)")
        if (metas != metas[root]).any():
            held = "; ".join(f"rank {r}: {m[0]} {np.dtype(chr(m[1])).name} values"
                             for r, m in enumerate(metas))
            raise ValueError(f"cannot broadcast from rank {root}: the ranks hold arrays of different "
                             f"size or dtype ({held}); is the same model built on every rank?")
        if not is_device_array(array):
            self._wait(self._mpi.Ibcast(array, root=root), "broadcast")
        else:
            ptr = self._device_pointer(array, "broadcast")
            self._nccl.broadcast(ptr, ptr, array.size, _nccl_dtype(array), root, _stream_ptr())

    def check_same(self, array: Array, what: str) -> None:
        """ValueError naming the ranks whose ``array`` differs from rank 0's (sha256 of dtype, shape, bytes).

        GPU arrays are copied to the host: meant for the start of training, not for every step.
        """
        if self._mpi is None:
            return
        host = np.ascontiguousarray(to_host(array))
        sha = hashlib.sha256(f"{host.dtype.str}{host.shape}".encode())
        sha.update(host.tobytes())
        digest = np.zeros(_DIGEST_BYTES, dtype=np.uint8)
        digest[:32] = np.frombuffer(sha.digest(), dtype=np.uint8)
        digest[32:40] = np.frombuffer(np.float64(host.sum(dtype=np.float64)).tobytes(), dtype=np.uint8)
        digest[40:] = np.frombuffer(np.int64(host.size).tobytes(), dtype=np.uint8)
        digests = self._allgather(digest, f"check_same({what})")
        differ = [r for r in range(self.size) if (digests[r, :32] != digests[0, :32]).any()]
        if differ:
            def describe(r: int) -> str:
                total = digests[r, 32:40].view(np.float64)[0]
                count = digests[r, 40:].view(np.int64)[0]
                return f"rank {r}: {count} values, sum {total:.17g}"

            raise ValueError(f"{what} differ across ranks: rank(s) {', '.join(map(str, differ))} differ "
                             f"from rank 0 ({'; '.join(describe(r) for r in [0, *differ])})")

    def barrier(self) -> None:
        """Wait until every rank gets here (with the timeout)."""
        if self._mpi is not None:
            self._wait(self._mpi.Ibarrier(), "barrier")

    def abort(self, message: str, code: int = 1) -> NoReturn:
        """Print ``message`` with this rank and end every rank of the job (exit status ``code``)."""
        sys.stderr.write(f"gpubp.distributed: rank {self.rank} of {self.size}: {message}; "
                         "aborting all ranks\n")
        sys.stderr.flush()
        if self._mpi is None:
            raise SystemExit(code)
        _abort_world(code)
        raise SystemExit(code)  # not reached: Abort does not return

    # ---- helpers ------------------------------------------------------------------------------------
    def _wait(self, request: Any, what: str) -> None:
        """Complete an MPI request, aborting the job if it takes longer than ``timeout``."""
        start = time.monotonic()
        while not request.Test():
            waited = time.monotonic() - start
            if self.timeout is not None and waited > self.timeout:
                self.abort(f"{what} did not complete within {self.timeout:g} s: another rank has stopped "
                           "or is stuck (a longer pause on some ranks needs a larger "
                           "gpubp.distributed.init(timeout=...))")
            if waited > SPIN_SECONDS:
                time.sleep(POLL_SECONDS)

    def _allgather(self, row: np.ndarray, what: str) -> np.ndarray:
        """Every rank's ``row`` (a small fixed-size array), stacked: (size, len(row))."""
        out = np.empty((self.size, row.size), dtype=row.dtype)
        self._wait(self._mpi.Iallgather(row, out), what)
        return out

    def _device_pointer(self, array: Array, what: str) -> int:
        if self._nccl is None:
            raise ValueError(f"{what}: got a GPU array but this communicator was made for device "
                             f"{self.device!r}; create the network on comm.device")
        return array.data.ptr


def init_for(ops: Any) -> Communicator:
    """:func:`init` for a network on the backend ``ops``: the CPU for a CPU backend, else the GPUs."""
    return init("cpu" if ops.on_host else "cuda")


def init(device: str | None = None, timeout: float | None = 60.0) -> Communicator:
    """Join the MPI job (or run alone) and pick this rank's device; returns its :class:`Communicator`.

    ``device``: "cpu", "cuda", "auto" (the default, from env GPUBP_DEVICE else "auto") or "cuda:N" (only
    with one rank per node). On GPUs a rank uses ``cuda:(local_rank % visible GPUs)``, where local_rank is
    its index among the ranks on its node: ``cuda:local_rank`` when every rank sees all the node's GPUs,
    ``cuda:0`` when the launcher gives each rank one (SLURM ``--gpus-per-task=1``, CUDA_VISIBLE_DEVICES per
    rank); two ranks of a node on one GPU are refused. The ranks talk over NCCL; every rank must resolve
    to the same kind of device. ``timeout``:
    seconds an MPI collective may wait before the job is aborted (None: wait forever).
    Without mpi4py a single process gets a communicator whose collectives do nothing. A second call
    returns the same communicator (with the new timeout).
    """
    global _world
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds or None; got {timeout!r}")
    kind, index = parse_device(device)
    if _world is not None:
        if device is not None and kind != "auto" and (kind == "cpu") != (_world.device == "cpu"):
            raise ValueError(f"gpubp.distributed is already initialised on {_world.device!r}; "
                             f"cannot switch to {device!r}")
        _world.timeout = timeout
        return _world
    try:
        from mpi4py import MPI
    except ImportError as exc:
        launched = _launcher_size()
        if launched > 1:
            raise RuntimeError(f"this process is one of {launched} MPI ranks but mpi4py is missing "
                               f"({exc}); install it with: pip install 'gpubp[mpi]'") from exc
        _world = Communicator(0, 1, _device_for(kind, index, 0, 1), timeout)
        return _world
    world = MPI.COMM_WORLD
    if world.size > 1:
        _install_excepthook(world.rank, world.size)
    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    local_rank, local_size = node.rank, node.size
    comm = Communicator(world.rank, world.size, "cpu", timeout, mpi_comm=world, local_rank=local_rank)
    error: Exception | None = None
    try:
        device_name = _device_for(kind, index, local_rank, local_size)
    except (DeviceError, ValueError) as exc:
        device_name, error = "", exc
    try:  # every rank of the node takes part, whatever its own outcome
        shared = _shared_gpu_error(Communicator(node.rank, node.size, "cpu", timeout, mpi_comm=node),
                                   device_name)
    finally:
        node.Free()
    error = error or shared
    # agree on the outcome before anyone goes on: a rank that failed alone would leave the others waiting
    outcomes = comm._allgather(np.array([error is not None, device_name.startswith("cuda")], dtype=np.int8),
                               "init (device check)")
    if error is not None:
        raise type(error)(f"rank {world.rank}: {error}")
    if outcomes[:, 0].any():
        bad = ", ".join(str(r) for r in np.flatnonzero(outcomes[:, 0]))
        raise DeviceError(f"rank(s) {bad} could not use device {device or 'auto'!r} (see their message)")
    if len(set(outcomes[:, 1].tolist())) > 1:
        raise ValueError("ranks resolved device 'auto' to different kinds (some GPU, some CPU): pass "
                         "device='cuda' or device='cpu' to gpubp.distributed.init on every rank")
    comm.device = device_name
    if device_name.startswith("cuda"):
        comm._nccl = _nccl_communicator(comm, int(device_name.split(":")[1]))
    _world = comm
    return comm


def is_main_process() -> bool:
    """Whether this process is rank 0 (or not part of an MPI job): the one that prints and saves."""
    if _world is not None:
        return _world.rank == 0
    for name in RANK_ENV:
        if name in os.environ:
            return os.environ[name].strip() == "0"
    return True


# ---- internals ------------------------------------------------------------------------------------
def _launcher_size() -> int:
    for name in SIZE_ENV:
        if os.environ.get(name, "").strip().isdigit():
            return int(os.environ[name])
    return 1


def _device_for(kind: str, index: int | None, local_rank: int, local_size: int) -> str:
    """"cpu" or "cuda:k" for the rank that is ``local_rank`` of ``local_size`` on its node. Only the rank's
    own GPU is probed: under "auto" the CPU where that GPU is not usable."""
    if kind == "cpu" or kind == "auto" and visible_gpus() == 0:
        return "cpu"
    if index is not None:
        if local_size > 1:
            raise ValueError(f"device 'cuda:{index}' would put {local_size} ranks of this node on one GPU; "
                             "pass device='cuda' so that each rank takes cuda:<local rank>")
        gpu = index
    else:
        count = visible_gpus()
        gpu = local_rank % count if count else local_rank
    reason = cuda_unavailable_reason(gpu)
    if reason is not None and kind == "auto":
        return "cpu"
    if reason is not None:
        raise DeviceError(f"local rank {local_rank} of {local_size} needs cuda:{gpu}: {reason}")
    return f"cuda:{gpu}"


def _shared_gpu_error(node: Communicator, device_name: str) -> DeviceError | None:
    """A DeviceError when two ranks of this node would use one GPU (NCCL refuses that), told apart by device
    UUID: MIG slices of one GPU share its PCI bus id but are separate GPUs, each with its UUID. Where ranks
    are on MIG slices of one GPU, NCCL (which compares bus ids) is allowed them through
    NCCL_MULTI_RANK_GPU_ENABLE=1 unless the environment sets it. None otherwise (also for CPU ranks, which
    send an empty row)."""
    row = np.zeros(16 + 48, dtype=np.uint8)  # the UUID's 16 bytes, then the bus id
    if device_name.startswith("cuda"):
        import cupy

        gpu = int(device_name.split(":")[1])
        row[:16] = np.frombuffer(cupy.cuda.runtime.getDeviceProperties(gpu)["uuid"][:16], dtype=np.uint8)
        bus = cupy.cuda.Device(gpu).pci_bus_id.encode()[:48]
        row[16:16 + len(bus)] = np.frombuffer(bus, dtype=np.uint8)
    rows = node._allgather(row, "init (GPU per rank)")
    users: dict[bytes, list[int]] = {}
    for local_rank, ids in enumerate(rows):
        if ids.any():
            users.setdefault(ids[:16].tobytes(), []).append(local_rank)
    shared = next(((uuid, ranks) for uuid, ranks in users.items() if len(ranks) > 1), None)
    if shared is not None:
        return DeviceError(f"local ranks {', '.join(map(str, shared[1]))} of this node would share the GPU "
                           f"GPU-{UUID(bytes=shared[0])} ({visible_gpus()} GPU(s) visible to a rank, "
                           f"{node.size} ranks on the node): start at most one rank per GPU")
    buses = [ids[16:].tobytes() for ids in rows if ids.any()]
    if len(set(buses)) < len(buses):  # MIG slices of one GPU
        os.environ.setdefault("NCCL_MULTI_RANK_GPU_ENABLE", "1")
    return None


def _nccl_communicator(comm: Communicator, gpu: int) -> Any:
    """An NCCL communicator over all ranks, its unique id made on rank 0 and broadcast over MPI."""
    import cupy

    try:
        from cupy.cuda import nccl
    except ImportError:
        nccl = None
    if not getattr(nccl, "available", False):
        raise DeviceError("CuPy cannot load NCCL (cupy.cuda.nccl.available is False), which GPU training "
                          "under MPI needs; install the NCCL library for your CUDA version as CuPy's "
                          "installation guide describes")
    cupy.cuda.Device(gpu).use()
    wire = np.zeros(1 + NCCL_UNIQUE_ID_BYTES, dtype=np.uint8)
    if comm.rank == 0:
        wire[:] = _encode_unique_id(nccl.get_unique_id())
    comm._wait(comm._mpi.Ibcast(wire, root=0), "init (NCCL unique id)")
    return nccl.NcclCommunicator(comm.size, _decode_unique_id(wire), comm.rank)


#: ncclUniqueId is 128 bytes. CuPy ≥ 14 hands it over as ``bytes``; older CuPy as a tuple of 128 ints, each
#: a C ``char`` (signed on x86, unsigned on Arm) that its NcclCommunicator(ndev, tuple, rank) converts back.
NCCL_UNIQUE_ID_BYTES = 128
_ID_BYTES, _ID_SIGNED_CHARS, _ID_UNSIGNED_CHARS = 0, 1, 2


def _encode_unique_id(uid: Any) -> np.ndarray:
    """[form, 128 id bytes] as uint8 for the MPI broadcast; form says how the local CuPy gave the id."""
    if isinstance(uid, (bytes, bytearray)):
        form, raw = _ID_BYTES, np.frombuffer(bytes(uid), dtype=np.uint8)
    else:
        values = np.array(uid, dtype=np.int64)
        form = _ID_UNSIGNED_CHARS if (values > 127).any() else _ID_SIGNED_CHARS
        raw = (values % 256).astype(np.uint8)
    if raw.size != NCCL_UNIQUE_ID_BYTES:
        raise RuntimeError(f"nccl.get_unique_id() gave {raw.size} bytes, not the {NCCL_UNIQUE_ID_BYTES} of "
                           "an ncclUniqueId: an unsupported CuPy version")
    return np.concatenate([[form], raw]).astype(np.uint8)


def _decode_unique_id(wire: np.ndarray) -> bytes | tuple[int, ...]:
    """The id in the form rank 0's CuPy gave it (every rank runs the same CuPy)."""
    form, raw = int(wire[0]), wire[1:]
    if form == _ID_BYTES:
        return raw.tobytes()
    return tuple(int(v) for v in (raw.view(np.int8) if form == _ID_SIGNED_CHARS else raw))


def _nccl_dtype(array: Array) -> int:
    from cupy.cuda import nccl

    types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
    if array.dtype not in types:
        raise ValueError(f"NCCL collectives here take float32 or float64 arrays; got {array.dtype}")
    return types[array.dtype]


def _done() -> None:
    """The wait of a collective that had nothing to do (a single process)."""


def _stream_ptr() -> int:
    import cupy

    return cupy.cuda.get_current_stream().ptr


def _check_contiguous(array: Array, what: str) -> None:
    if not hasattr(array, "flags") or not array.flags.c_contiguous:
        raise ValueError(f"{what} needs a C-contiguous NumPy or CuPy array (e.g. the flat gradient "
                         f"buffer); got {type(array).__name__}")


def _install_excepthook(rank: int, size: int) -> None:
    """On an uncaught exception: print it with this rank, then MPI_Abort so that no other rank hangs."""
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        # the one-line reason first: mpiexec may cut the traceback when another rank aborts
        sys.stderr.write(f"gpubp.distributed: rank {rank} of {size} failed with an uncaught "
                         f"{exc_type.__name__}: {exc}; aborting all ranks\n")
        sys.stderr.flush()
        previous(exc_type, exc, tb)
        sys.stderr.flush()
        _abort_world(1)

    sys.excepthook = hook


def _abort_world(code: int) -> None:
    """MPI_Abort on COMM_WORLD after a short grace period for the output to reach mpiexec."""
    from mpi4py import MPI

    time.sleep(ABORT_GRACE_SECONDS)
    MPI.COMM_WORLD.Abort(code)
