"""Data-parallel scaling: per-step compute and allreduce time on 1 and 2 CPU processes, and a ring-allreduce
model of 8 GPUs.

    python bench/distributed_scaling.py                       # measure S, M, L on 1 and 2 processes
    python bench/distributed_scaling.py --gpu-step-ms M=0.4,L=4.1   # + efficiency from GPU step times

Measurement: for each process count P the script relaunches itself under ``mpiexec -n P`` (BLAS threads per
process = cores // P, so every run uses the same cores) and runs ``Network.fit(..., distributed=comm)`` for
one epoch of ``steps + 1`` global batches of the config's size (fp32, synthetic data). A wrapper around the
communicator times each gradient allreduce in two parts: "wait", a barrier just before it (time lost to the
slower rank: imbalance and noise from other load on the machine), and "allreduce", the collective itself;
"compute" is the time between one allreduce's end and the next barrier (optimizer update, batch slicing,
forward and BP1–BP4 on this rank's shard). Medians over the steps, seen from rank 0.

Model (weak scaling: each GPU keeps the config's batch, so the global batch grows with N and the efficiency
is E(N) = t_c / t_step(N)). A ring allreduce of B bytes over N GPUs takes

    t_ar(N) = 2(N−1)/N · B / β + 2(N−1) · α

with β the NCCL bus bandwidth and α the per-hop latency of the link; these are ASSUMPTIONS (defaults in
LINKS, override with --link), not measurements. "one allreduce" is what fit does now: t_step = t_c + t_ar
after BP1–BP4. "per-layer buckets" is the schedule gradient bucketing would give: the single-GPU step time
t_c is split over the forward GEMMs and, in backward order, each layer's BP4 and BP2 GEMMs in proportion to
their flops; layer l's gradient (Wˡ and bˡ) is allreduced as soon as its BP3/BP4 are done, one bucket after
another on one NCCL stream, overlapping the rest of the backward pass (BP2 into the layer below, and so
on). This machine has no GPU: t_c is an input (--gpu-step-ms, from the GPU benchmarks); without it the
script prints the break-even t_c (and the GEMM throughput it implies) at which 8 GPUs reach 90%.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: NCCL allreduce bus bandwidth β (GB/s) and per-hop latency α (µs) assumed for each link (see module doc)
LINKS = {
    "nvlink": (360.0, 3.0),  # 8× H100 SXM on NVLink 4 / NVSwitch (450 GB/s per direction per GPU)
    "infiniband": (40.0, 6.0),  # 8 nodes × 1 GPU, one NDR 400 Gb/s (50 GB/s) HCA per GPU
}
EFFICIENCY_TARGET = 0.9


# ---- measurement (runs inside every rank) ------------------------------------------------------------
class TimedCommunicator:
    """Delegates to a Communicator; records (start, after barrier, end) of each gradient allreduce."""

    def __init__(self, comm, grad_size: int) -> None:
        self._comm, self._grad_size, self.marks = comm, grad_size, []

    def __getattr__(self, name):
        return getattr(self._comm, name)

    def allreduce_sum(self, array) -> None:
        if array.size != self._grad_size:  # the once-per-epoch loss sum
            return self._comm.allreduce_sum(array)
        start = time.perf_counter()
        self._comm.barrier()
        synced = time.perf_counter()
        self._comm.allreduce_sum(array)
        self.marks.append((start, synced, time.perf_counter()))

    def allreduce_sum_start(self, array):
        """fit's per-step sum (one piece on the CPU), timed as a blocking allreduce."""
        self.allreduce_sum(array)
        return lambda: None


def measure(config_name: str, steps: int, comm) -> dict:
    import numpy as np

    import gpubp
    from gpubp.benchmark import get_config, synthetic_data

    cfg = get_config(config_name)
    net = gpubp.Network(list(cfg.sizes), activation=cfg.activation, output=cfg.output, cost=cfg.cost,
                        device=comm.device, dtype="float32", seed=0)
    X, y = synthetic_data(cfg, cfg.batch_size * (steps + 1))
    timed = TimedCommunicator(comm, net.parameters().size)
    net.fit(X, y, epochs=1, batch_size=cfg.batch_size, lr=cfg.lr, shuffle=False, progress=False,
            distributed=timed)
    marks = timed.marks
    compute = [marks[k][0] - marks[k - 1][2] for k in range(1, len(marks))]
    wait = [synced - start for start, synced, _ in marks[1:]]
    allreduce = [end - synced for _, synced, end in marks[1:]]
    c_ms, w_ms, a_ms = (1e3 * statistics.median(t) for t in (compute, wait, allreduce))
    return {"config": cfg.name, "sizes": list(cfg.sizes), "procs": comm.size,
            "threads": int(os.environ.get("OMP_NUM_THREADS", 0)),
            "params": int(net.parameters().size), "bytes": int(net.parameters().nbytes),
            "batch": cfg.batch_size, "steps": len(allreduce), "compute_ms": c_ms, "wait_ms": w_ms,
            "allreduce_ms": a_ms, "step_ms": c_ms + w_ms + a_ms,
            "samples_per_s": cfg.batch_size / ((c_ms + w_ms + a_ms) / 1e3),
            "flops_per_step": int(step_flops(cfg.sizes, cfg.batch_size)), "numpy": np.__version__}


def step_flops(sizes, batch: int) -> float:
    """GEMM flops of one step: forward aWᵀ and BP4 δᵀa in every layer, BP2 δW in all but the first."""
    macs = [n_in * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    return 2.0 * batch * (2 * sum(macs) + sum(macs[1:]))


def worker(configs: list[str], steps: dict[str, int]) -> None:
    from gpubp import distributed

    comm = distributed.init(device="cpu", timeout=600)
    for name in configs:
        result = measure(name, steps[name], comm)
        if comm.rank == 0:
            print("RESULT " + json.dumps(result), flush=True)


# ---- driver -------------------------------------------------------------------------------------------
def run_procs(procs: int, configs: list[str], steps: dict[str, int], threads: int) -> list[dict]:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    mpiexec = str(mpiexec) if mpiexec.exists() else shutil.which("mpiexec")
    if mpiexec is None:
        raise SystemExit("mpiexec not found: pip install 'gpubp[mpi]'")
    threads = str(threads)
    env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [mpiexec, "-n", str(procs), sys.executable, __file__, "--worker", "--configs", *configs,
           "--steps", ",".join(f"{k}={v}" for k, v in steps.items())]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    return [json.loads(line[7:]) for line in out.stdout.splitlines() if line.startswith("RESULT ")]


def combine(runs: list[dict]) -> list[dict]:
    """One row per (config, processes): the median over repeated runs of each timing."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["config"], r["procs"]), []).append(r)
    rows = []
    for group in groups.values():
        row = dict(group[0])
        for key in ("compute_ms", "wait_ms", "allreduce_ms"):
            row[key] = statistics.median(r[key] for r in group)
        row["step_ms"] = row["compute_ms"] + row["wait_ms"] + row["allreduce_ms"]
        row["samples_per_s"] = row["batch"] / (row["step_ms"] / 1e3)
        rows.append(row)
    return sorted(rows, key=lambda r: ("SML".find(r["config"]), r["procs"]))


def ring_allreduce_s(nbytes: float, n: int, bandwidth_gbs: float, latency_us: float) -> float:
    """2(N−1)/N · B / β + 2(N−1) · α, in seconds (0 for one GPU)."""
    return 2 * (n - 1) / n * nbytes / (bandwidth_gbs * 1e9) + 2 * (n - 1) * latency_us * 1e-6


def modelled_step_s(t_c: float, sizes, batch: int, itemsize: int, n: int, link: tuple[float, float],
                    buckets: bool) -> float:
    """Step time on N GPUs given the single-GPU one: one allreduce after backprop, or per-layer buckets."""
    macs = [n_in * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    nbytes = [itemsize * (m + n_out) for m, n_out in zip(macs, sizes[1:])]
    if not buckets:
        return t_c + ring_allreduce_s(sum(nbytes), n, *link)
    per_flop = t_c / step_flops(sizes, batch)
    now = per_flop * 2 * batch * sum(macs)  # the forward pass
    comm_free = 0.0
    for l in range(len(macs) - 1, -1, -1):  # backward order, as in Network.backprop_sum
        now += per_flop * 2 * batch * macs[l]  # BP3/BP4: layer l's gradient is complete
        comm_free = max(now, comm_free) + ring_allreduce_s(nbytes[l], n, *link)
        if l > 0:
            now += per_flop * 2 * batch * macs[l]  # BP2's δˡ⁺¹Wˡ⁺¹ GEMM, overlapping that allreduce
    return max(now, comm_free)


def break_even_s(sizes, batch: int, itemsize: int, n: int, link: tuple[float, float], buckets: bool) -> float:
    """The smallest single-GPU step time for which N GPUs reach EFFICIENCY_TARGET (bisection in log t)."""
    lo, hi = 1e-8, 10.0
    for _ in range(100):
        mid = (lo * hi) ** 0.5
        eff = mid / modelled_step_s(mid, sizes, batch, itemsize, n, link, buckets)
        lo, hi = (lo, mid) if eff >= EFFICIENCY_TARGET else (mid, hi)
    return hi


def model_table(results: list[dict], gpu_step_ms: dict[str, float], gpus: list[int]) -> list[str]:
    lines = ["| config | grad MB | link (β, α assumed) | one allreduce, 8 GPUs | break-even t_c for 90% at 8 "
             "GPUs: one allreduce / per-layer buckets | GPU t_c (input) | "
             + " | ".join(f"E({n}) one / buckets" for n in gpus) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(gpus)]
    for r in {r["config"]: r for r in results}.values():
        name, sizes, batch, nbytes = r["config"], r["sizes"], r["batch"], r["bytes"]
        itemsize = nbytes // r["params"]
        flops = step_flops(sizes, batch)
        for link_name, link in LINKS.items():
            one, bucketed = (break_even_s(sizes, batch, itemsize, 8, link, b) for b in (False, True))
            t_c = gpu_step_ms.get(name)
            cells = ["n/a"] * len(gpus) if t_c is None else [
                " / ".join(f"{t_c / 1e3 / modelled_step_s(t_c / 1e3, sizes, batch, itemsize, n, link, b):.0%}"
                           for b in (False, True)) for n in gpus]
            rates = f"GEMMs at ≤ {flops / one / 1e12:.3g} / {flops / bucketed / 1e12:.3g} TFLOP/s"
            lines.append(f"| {name} | {nbytes / 1e6:.2f} | {link_name} ({link[0]:g} GB/s, {link[1]:g} µs) | "
                         f"{ring_allreduce_s(nbytes, 8, *link) * 1e3:.3f} ms | "
                         f"{one * 1e3:.3f} ms / {bucketed * 1e3:.3f} ms ({rates}) | "
                         f"{'n/a' if t_c is None else f'{t_c:g} ms'} | " + " | ".join(cells) + " |")
    return lines


def parse_pairs(text: str) -> dict[str, float]:
    pairs = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        try:
            pairs[key.strip().upper()] = float(value)
        except ValueError:
            raise SystemExit(f"expected NAME=NUMBER pairs such as M=0.4,L=4.1; got {item!r}")
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["S", "M", "L"])
    parser.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", default="S=200,M=30,L=6", help="timed steps per config")
    parser.add_argument("--threads", type=int, default=0, help="BLAS threads per process "
                        "(default: cores // processes)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per process count")
    parser.add_argument("--gpu-step-ms", default="", help="measured single-GPU step times, e.g. M=0.4,L=4")
    parser.add_argument("--link", action="append", default=[], metavar="NAME=GBS:US",
                        help="override or add a link's bus bandwidth (GB/s) and hop latency (µs)")
    parser.add_argument("--json", type=Path, help="write the measurements to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps = {k: int(v) for k, v in parse_pairs(args.steps).items()}
    if args.worker:
        worker(args.configs, steps)
        return
    for item in args.link:
        name, _, value = item.partition("=")
        bw, _, lat = value.partition(":")
        LINKS[name] = (float(bw), float(lat or 0))
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    runs = [r for _ in range(args.repeats) for p in args.procs
            for r in run_procs(p, args.configs, steps, args.threads or max(1, cores // p))]
    results = combine(runs)
    print(f"CPU: {cores} cores, load average {load_before:.2f} before and {os.getloadavg()[0]:.2f} after; "
          f"BLAS threads per process = {args.threads or 'cores // processes'}; rank 0's medians, median of "
          f"{args.repeats} interleaved runs\n")
    print("| config | processes × threads | params | compute ms | wait ms | allreduce ms | step ms | "
          "samples/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['config']} | {r['procs']} × {r['threads']} | {r['params']:,} | {r['compute_ms']:.3f} | "
              f"{r['wait_ms']:.3f} | {r['allreduce_ms']:.3f} | {r['step_ms']:.3f} | "
              f"{r['samples_per_s']:,.0f} |")
    print("\nRing-allreduce model, 8 GPUs (β, α assumed, not measured; GPU step times are inputs):\n")
    print("\n".join(model_table(results, parse_pairs(args.gpu_step_ms), [2, 4, 8])))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                                         "cores": cores, "load_average": load_before, "results": results,
                                         "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
