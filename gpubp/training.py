"""The training loop behind ``Network.fit``: data on the device, shuffled there, one step per mini-batch.

The data set is put on the device once. Each epoch draws a permutation, gathers the shuffled rows into two
preallocated device buffers, and the mini-batches are slices of those buffers. A step is BP1–BP4 into the
flat gradient (a sum over the batch) and one optimizer call; the loss is summed on the device and read once
per epoch, so a step neither copies to the host nor waits for the device.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import warnings
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from . import inputs, lbfgs
from .backend import DeviceError, parse_device
from .backend.errors import cuda_error_cause
from .backend.arrays import is_sparse
from .backend.programs import ProgramPlan, TrainingProgram
from .checkpoint import Checkpointer, say
from .metrics import METRICS
from .model_state import ModelState
from .optimizers import LBFGS, OPTIMIZERS, Optimizer, optimizer_name

#: under distributed training (NCCL), weight gradients at least this large are summed across ranks as soon
#: as their layer's BP4 is done, overlapping the rest of the backward pass
BUCKET_BYTES = 1 << 20
#: progress-bar refreshes per epoch (updating on every step would cost Python time on small batches)
PROGRESS_UPDATES = 50
#: seconds a compiled chunk of mini-batches should take: Ctrl-C, the progress bar and the end of an epoch wait
#: for the chunk under way
CHUNK_SECONDS = 0.1
#: optimizer settings that are arguments of ``fit`` itself, not ``optimizer_options``
FIT_SETTINGS = ("lr", "momentum", "weight_decay", "lr_schedule", "power_t", "tol", "n_iter_no_change")
#: metrics of the history where higher is better: the stopping rule watches minus them
HIGHER_IS_BETTER = ("accuracy", "r2")


class Trainer:
    """One call of ``Network.fit``: checks every argument before anything changes, then runs."""

    def __init__(self, net: Any, *, epochs: int, batch_size: int, lr: float, optimizer: str,
                 momentum: float, weight_decay: float, shuffle: bool, progress: bool | None,
                 seed: int | None, callbacks: Iterable[Callable] | None, comm: Any,
                 checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 1,
                 lr_schedule: str = "constant", power_t: float = 0.5, tol: float | None = None,
                 n_iter_no_change: int = 10, monitor: str | Callable | None = None,
                 restore_best: bool = False, optimizer_options: dict[str, Any] | None = None,
                 compiled: bool | None = None, on_divergence: str = "raise") -> None:
        self.net = net
        self.epochs = inputs.positive_int(epochs, "epochs", minimum=0)
        self.batch_size = inputs.positive_int(batch_size, "batch_size")
        self.lr = inputs.positive_float(lr, "lr")
        self.momentum = inputs.positive_float(momentum, "momentum", allow_zero=True, below=1.0)
        self.weight_decay = inputs.positive_float(weight_decay, "weight_decay", allow_zero=True)
        self.optimizer_name = optimizer_name(optimizer)
        if self.optimizer_name == LBFGS.name:
            _check_lbfgs(comm, checkpoint, lr_schedule, monitor, restore_best, compiled)
        self.shuffle = bool(shuffle)
        self.seed = inputs.seed(seed)
        self.callbacks = list(callbacks or [])
        if not all(callable(cb) for cb in self.callbacks):
            raise ValueError("callbacks must be callables cb(net, epoch, logs)")
        self.comm = comm
        if comm is not None and parse_device(comm.device)[0] != parse_device(net.device)[0]:
            raise ValueError(f"the network is on {net.device!r} but the communicator of this rank is for "
                             f"{comm.device!r}: create the network on comm.device, or move it with "
                             f"net.to(comm.device)")
        if comm is not None and self.batch_size < comm.size:
            raise ValueError(f"batch_size {self.batch_size} is smaller than the world size {comm.size}: "
                             "every rank needs at least one sample of each mini-batch")
        main_rank = comm is None or comm.rank == 0
        self.progress = main_rank and (sys.stderr.isatty() if progress is None else bool(progress))
        every = inputs.positive_int(checkpoint_every, "checkpoint_every")
        self.checkpoints = None if checkpoint is None else Checkpointer(checkpoint, every, comm)
        self._check_schedule(lr_schedule, power_t, tol, n_iter_no_change, monitor, restore_best)
        self.options = self._optimizer_options(optimizer_options)
        if compiled not in (None, True, False):
            raise ValueError(f"compiled must be None (where available), True or False; got {compiled!r}")
        self.compiled = compiled
        if on_divergence not in ("raise", "continue"):
            raise ValueError(f"on_divergence must be 'raise' or 'continue'; got {on_divergence!r}")
        self.on_divergence = on_divergence

    def _check_schedule(self, lr_schedule: Any, power_t: Any, tol: Any, n_iter_no_change: Any, monitor: Any,
                        restore_best: Any) -> None:
        """The schedule and stopping rule arguments, checked as the optimizer's settings of those names
        (L-BFGS: ``tol`` is its gradient tolerance; ``_check_lbfgs`` refused the rest)."""
        rule = {} if tol is None else {"tol": tol}
        if self.optimizer_name == LBFGS.name:
            Optimizer.check_settings(power_t=power_t, n_iter_no_change=n_iter_no_change)
            self.schedule, self.monitor, self.restore_best = LBFGS.check_settings(**rule), None, False
            return
        self.schedule = OPTIMIZERS[self.optimizer_name].check_settings(
            lr_schedule=lr_schedule, power_t=power_t, n_iter_no_change=n_iter_no_change, **rule)
        if monitor is not None and not (isinstance(monitor, str) or callable(monitor)):
            raise ValueError(f"monitor must be a key of the history (such as 'loss' or 'val_loss') or a "
                             f"callable fn(net, logs) -> float; got {monitor!r}")
        self.restore_best = inputs.boolean(restore_best, "restore_best")
        if tol is None and (monitor is not None or self.restore_best):
            raise ValueError(f"{'monitor' if monitor is not None else 'restore_best'} needs the stopping rule: "
                             "give tol (with n_iter_no_change > epochs it never stops training)")
        if self.restore_best and self.checkpoints is not None:
            raise ValueError("restore_best keeps the best parameters in memory only: it cannot be combined "
                             "with checkpoint")
        self.monitor = monitor

    def _optimizer_options(self, options: Any) -> dict[str, Any]:
        """``optimizer_options`` checked against the optimizer's settings; those ``fit`` has an argument for
        are refused."""
        if options is None:
            return {}
        if not isinstance(options, dict):
            raise ValueError(f"optimizer_options must be a dict of optimizer settings by name; got {options!r}")
        optimizer = OPTIMIZERS[self.optimizer_name]
        own = [key for key in options if key in FIT_SETTINGS]
        if own:
            raise ValueError(f"optimizer_options: {own[0]!r} is an argument of fit; pass {own[0]}=... instead")
        unknown = [key for key in options if key not in optimizer.defaults]
        if unknown:
            settable = [key for key in optimizer.defaults if key not in FIT_SETTINGS]
            raise ValueError(f"optimizer_options: the {optimizer.name} optimizer has no setting "
                             f"{', '.join(map(repr, unknown))}; the settings it takes there: {', '.join(settable)}")
        try:
            return optimizer.check_settings(**options)
        except ValueError as exc:
            raise ValueError(f"optimizer_options: {exc}") from None

    def run(self, X: Any, Y: Any, validation_data: Any, sample_weight: Any = None) -> dict[str, list]:
        """Train; the checkpoint folder, if any, is released when training ends, however it ends."""
        try:
            return self._fit(X, Y, validation_data, sample_weight)
        finally:
            if self.checkpoints is not None:
                self.checkpoints.close()

    def _fit(self, X: Any, Y: Any, validation_data: Any, sample_weight: Any) -> dict[str, list]:
        if self.comm is not None and self.net.device != self.comm.device:
            self.net.to(self.comm.device)  # another GPU than this rank's: NCCL sums on comm.device only
        net, ops = self.net, self.net.ops
        with ops.activate():
            x, _ = inputs.check_inputs(X, net.sizes[0], ops, net.dtype)
            target = net.check_targets(Y, x.shape[0])
            if x.shape[0] == 0:
                raise ValueError("fit needs at least one training sample; X is empty")
            weights = inputs.check_sample_weight(sample_weight, x.shape[0], ops, net.dtype)
            validation = self._validation(validation_data)
            if self.optimizer_name == LBFGS.name:
                return self._fit_lbfgs(x, target, weights, validation)
            if self.compiled:
                self._require_compiled(x, target, weights)
            # a sparse X is not copied: each mini-batch gathers its rows (_ShuffledRows)
            copied = sum(a.nbytes for a in (x, target, weights) if a is not None and not is_sparse(a)) \
                if self.shuffle else 0
            net.check_fit_memory(self.optimizer_name, min(self.batch_size, x.shape[0]), copied)
            self.watch = Monitor(self.monitor, self._history_keys(validation)) if "tol" in self.schedule else None
            self.identity, self._restart_point = self._run(x.shape[0], validation, weights is not None), None
            history: dict[str, list] = {"loss": []}
            if validation is not None:
                history.update({f"val_{name}": [] for name in ("loss", *METRICS[net.task])})
            resumed = None
            if self.checkpoints is not None:
                resumed = self.checkpoints.open(net, self.optimizer_name, self.identity, history)
            optimizer = net.optimizer_for(self.optimizer_name, lr=self.lr, momentum=self.momentum,
                                          weight_decay=self.weight_decay)
            # a checkpoint from before schedules (no running state stored) ran at a constant lr: start afresh
            self._start_schedule(optimizer, resumed is not None and "current_lr" in resumed.state.optimizer.settings)
            if resumed is not None:
                history = resumed.history
            net.history = history
            rng = net.shuffle_rng = net.shuffle_rng if resumed is not None else self._shuffle_rng()
            if self.comm is not None:
                self._agree_across_ranks(x.shape[0], optimizer, rng)
            if resumed is not None and self._report_resume(resumed):
                return history
            # under MPI every rank must take the same branch: there Ctrl-C ends the job at once
            deferred = _deferred_interrupt() if self.comm is None else contextlib.nullcontext({"hit": False})
            with ops.errstate(), ops.training_floats(), deferred as interrupt:
                try:
                    self._epochs(x, target, weights, validation, optimizer, rng, history, interrupt,
                                 first=1 if resumed is None else resumed.epoch + 1)
                except BaseException as exc:
                    self._checkpoint_restart_point()
                    cause = cuda_error_cause(exc, net.device) if isinstance(exc, RuntimeError) else None
                    if cause is not None:  # a CUDA error: what it means for the GPU, and what to do
                        raise DeviceError(f"training stopped: {cause}") from exc
                    raise
        return history

    def _fit_lbfgs(self, x: Any, target: Any, weights: Any, validation: Any) -> dict[str, list]:
        """``optimizer="lbfgs"``: scipy's L-BFGS-B over the full batch (``gpubp.lbfgs``), each of its iterations
        an epoch of the history, the callbacks and the progress output. ``net.optimizer`` is left as it was."""
        net, ops = self.net, self.net.ops
        net.check_fit_memory(self.optimizer_name, min(self.batch_size, x.shape[0]))
        settings = {**LBFGS.defaults, "weight_decay": self.weight_decay, **self.schedule, **self.options}
        objective = lbfgs.Objective(net, x, target, weights, settings["weight_decay"],
                                    settings["decay_per_sample"], self.batch_size)
        net.training_path = "eager: L-BFGS evaluates the whole data set for scipy's L-BFGS-B, chunk by chunk"
        history = net.history = {key: [] for key in self._history_keys(validation)}
        if self.epochs == 0:
            return history
        start = ops.to_numpy(net.parameters()).astype(np.float64)
        previous = start

        def iteration(theta: np.ndarray, loss: float) -> bool:
            nonlocal previous
            epoch = len(history["loss"]) + 1
            if self.on_divergence == "raise" and not np.isfinite(loss):  # lbfgs.minimize puts `previous` back
                raise FloatingPointError(f"training diverged in L-BFGS iteration {epoch}: the loss became {loss}; "
                                         f"the parameters are those of iteration {epoch - 1}")
            previous = theta
            logs = {"loss": loss}
            if validation is not None:
                logs.update({f"val_{name}": value for name, value in net.evaluate_checked(*validation).items()})
            for key, value in logs.items():
                history[key].append(value)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()})
            else:
                self._print_epoch(epoch, logs)
            if interrupt["hit"]:
                raise KeyboardInterrupt(f"training interrupted after L-BFGS iteration {epoch}")
            return any(cb(net, epoch, dict(logs)) is False for cb in self.callbacks)

        with ops.errstate(), ops.training_floats(), _deferred_interrupt() as interrupt, \
                _progress_bar(self.progress, self.epochs, "L-BFGS", "iterations") as bar:
            outcome = lbfgs.minimize(objective, start, self.epochs, settings["max_fun"], settings["tol"], iteration)
            if self.on_divergence == "raise" and not ops.all_finite(net.parameters()):
                objective.load(previous)
                raise FloatingPointError("L-BFGS diverged: its final parameters are NaN or infinite; the "
                                         "parameters are those of its last finite iteration")
        warning = lbfgs.not_converged(outcome.result)
        if warning is not None:
            warnings.warn(warning, stacklevel=5)
        return history

    def _run(self, n: int, validation: Any, weighted: bool) -> dict[str, Any]:
        """What identifies this run to its checkpoints: the data size and the fit arguments that shape the
        trajectory (``epochs`` may grow on a resume; μ counts where a velocity uses it)."""
        uses_momentum = "velocity" in OPTIMIZERS[self.optimizer_name].buffers
        return {"samples": n, "validation_samples": None if validation is None else validation[0].shape[0],
                "sample_weight": weighted,
                "batch_size": self.batch_size, "optimizer": self.optimizer_name, "lr": self.lr,
                "momentum": self.momentum if uses_momentum else None,
                "weight_decay": self.weight_decay, "shuffle": self.shuffle,
                "seed": None if self.seed is None else int(self.seed), "epochs": self.epochs,
                **self._schedule_run()}

    def _schedule_run(self) -> dict[str, Any]:
        """The schedule's and the stopping rule's part of the run identity, each None where it does not shape
        the trajectory (as in checkpoints written before these settings existed, which so still resume)."""
        schedule, rule = self.schedule["lr_schedule"], self.watch is not None
        return {"lr_schedule": None if schedule == "constant" else schedule,
                "power_t": self.schedule["power_t"] if schedule == "invscaling" else None,
                "tol": self.schedule["tol"] if rule else None,
                "n_iter_no_change": self.schedule["n_iter_no_change"] if rule else None,
                "monitor": self.watch.name if rule else None,
                "optimizer_options": json.dumps(self.options, sort_keys=True) if self.options else None}

    def _history_keys(self, validation: Any) -> list[str]:
        """What this fit records each epoch."""
        names = () if validation is None else ("loss", *METRICS[self.net.task])
        return ["loss"] + [f"val_{name}" for name in names]

    def _start_schedule(self, optimizer: Optimizer, resumed: bool) -> None:
        """This fit's schedule settings and ``optimizer_options`` on the optimizer. A fresh run starts the
        schedule (from the running state ``optimizer_options`` gives, if any); a resumed one continues the
        checkpoint's."""
        running = {key: value for key, value in self.options.items() if key in optimizer.running}
        optimizer.configure(**self.schedule, **{k: v for k, v in self.options.items() if k not in running})
        if not resumed:
            optimizer.start_schedule(**running)

    def _report_resume(self, resumed: Any) -> bool:
        """Say on rank 0 where training resumes; True when the run has nothing left to do."""
        complete = self.checkpoints.complete(resumed, self.epochs)
        if self.checkpoints.main_rank:
            say(f"{resumed.name}: the run is complete ({resumed.epoch} epochs); nothing left to do"
                if complete else f"resuming from {resumed.name}: epoch {resumed.epoch} of {self.epochs} done")
        return complete

    def _agree_across_ranks(self, n: int, optimizer: Any, rng: np.random.Generator) -> None:
        """Check that every rank trains the same model on equally long data from the same shuffle state
        (a resumed checkpoint included), then start from rank 0's parameters and optimizer state."""
        net, comm = self.net, self.comm
        tail = n % self.batch_size
        if 0 < tail < comm.size:
            raise ValueError(f"the last mini-batch has {tail} samples (len(X) % batch_size), fewer than the "
                             f"world size {comm.size}: every rank needs at least one sample of each batch")
        settings = np.array([n, self.batch_size, self.epochs, self.shuffle], dtype=np.int64)
        comm.check_same(settings, "data size and fit arguments")
        config = f"{net.sizes} {net.activation.name} {net.output.name} {net.cost.name} {net.dtype.name} " \
            f"{net.matmul_precision}"
        comm.check_same(np.frombuffer(config.encode(), np.uint8), "model configuration")
        schedule = json.dumps(self._schedule_run(), sort_keys=True)  # every rank takes rank 0's decisions
        comm.check_same(np.frombuffer(schedule.encode(), np.uint8), "schedule and stopping rule")
        comm.broadcast(net.parameters(), root=0)
        comm.check_same(net.parameters(), "initial parameters")
        steps = np.array([optimizer.t], dtype=np.int64)
        comm.broadcast(steps, root=0)
        optimizer.t = int(steps[0])
        for buffer in optimizer.state_arrays():
            comm.broadcast(buffer, root=0)
        resume = json.dumps([len(net.history["loss"]), rng.bit_generator.state], sort_keys=True)
        comm.check_same(np.frombuffer(resume.encode(), np.uint8), "epoch reached and shuffle generator state")

    def _validation(self, validation_data: Any) -> tuple[Any, Any] | None:
        if validation_data is None:
            return None
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("validation_data must be a pair (X_val, Y_val)")
        xv, _ = inputs.check_inputs(validation_data[0], self.net.sizes[0], self.net.ops, self.net.dtype,
                                    what="validation X")
        return xv, self.net.check_targets(validation_data[1], xv.shape[0], what="validation Y")

    def _shuffle_rng(self) -> np.random.Generator:
        """The generator of the epochs' orders: from ``seed`` when given, else the network's generator of its
        previous ``fit`` continued (so fit(seed=s, epochs=a) then fit(epochs=b) shuffles as one fit of a + b
        epochs), else fresh."""
        rng = self.net.shuffle_rng if self.seed is None else None
        if self.comm is not None:
            state = "" if rng is None else json.dumps(rng.bit_generator.state, sort_keys=True)
            self.comm.check_same(np.frombuffer(state.encode(), np.uint8), "shuffle generator state")
        return rng if rng is not None else np.random.default_rng(self._shared_seed())

    def _shared_seed(self) -> int | None:
        """The shuffle seed; under ``distributed`` every rank must draw the same order, so rank 0's wins."""
        if self.comm is None:
            return self.seed
        seed = np.array([self.seed if self.seed is not None else np.random.SeedSequence().entropy % 2**62],
                        dtype=np.int64)
        self.comm.broadcast(seed, root=0)
        return int(seed[0])

    def _epochs(self, x, target, weights, validation, optimizer, rng, history, interrupt, first: int) -> None:
        net, ops, n, bs = self.net, self.net.ops, x.shape[0], self.batch_size
        program = self._program(x, target, weights, optimizer)
        xs, ts, wts = x, target, weights
        sparse = is_sparse(x)
        if self.shuffle and program is None:
            xs, ts, wts = net.shuffle_buffers(None if sparse else x, target, weights)
        in_order = ops.row_index(n) if program is not None and not self.shuffle else None
        loss_sum = ops.zeros((1,), net.dtype)
        state = [net.parameters()] + optimizer.state_arrays()
        # the state at the start of each epoch: what a diverging epoch is put back to and what a checkpoint
        # written on an interruption holds; without either it is not kept (one copy of parameters and
        # optimizer state less, 115 MiB for a 10 M-weight first layer under Adam)
        kept = self.on_divergence == "raise" or self.checkpoints is not None
        snapshot = [ops.empty(s.shape, s.dtype) for s in state] if kept else []
        batches = [(start, min(start + bs, n)) for start in range(0, n, bs)]
        # restore_best: the parameters of the best epoch so far (before any, those the fit started from)
        self._best = ops.empty(net.parameters().shape, net.dtype) if self.restore_best else None
        if self._best is not None:
            ops.copy(net.parameters(), out=self._best)
        for epoch in range(first, self.epochs + 1):
            self._restart_point = None
            for source, saved in zip(state, snapshot):
                ops.copy(source, out=saved)
            steps_before = optimizer.t
            if kept:
                self._restart_point = (epoch - 1, snapshot, steps_before, rng.bit_generator.state)
            self._restart_settings = optimizer.settings()
            order = ops.permutation(n, rng) if self.shuffle else in_order
            if self.shuffle and program is None:
                if sparse:
                    xs = _ShuffledRows(x, order)
                else:
                    ops.take_rows(x, order, out=xs)
                if ts is not None:
                    ops.take_rows(target, order, out=ts)
                if wts is not None:
                    ops.take_rows(weights, order, out=wts)
            # the gradient of batch [start, stop) is divided by its size, or by its total weight
            totals = [stop - start for start, stop in batches] if wts is None else \
                _batch_totals(ops.to_numpy(wts.cumsum(dtype=np.float64)), batches)
            loss_sum.fill(0)
            with _progress_bar(self.progress, n, f"epoch {epoch}/{self.epochs}", "samples") as bar:
                if program is None:
                    ran = self._eager_batches(xs, ts, wts, batches, totals, optimizer, loss_sum, bar, interrupt)
                else:
                    ran = self._compiled_batches(program, order, len(batches), loss_sum, bar, interrupt)
                if self.comm is not None:
                    self.comm.allreduce_sum(loss_sum)
                done = batches[ran - 1][1]
                logs = {"loss": ops.item(loss_sum) / sum(totals[:ran])}
                if self.on_divergence == "raise":
                    self._check_finite(epoch, logs["loss"], state, snapshot, optimizer, steps_before)
                if validation is not None:
                    result = net.evaluate_checked(*validation)
                    logs.update({f"val_{name}": value for name, value in result.items()})
                if bar is not None:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()})
            for key, value in logs.items():
                history[key].append(value)
            if bar is None:
                self._print_epoch(epoch, logs)
            if interrupt["hit"]:
                self._restore_best()
                raise KeyboardInterrupt(f"training interrupted in epoch {epoch} after {done} of {n} samples")
            halt = self._end_epoch(optimizer, n, epoch, logs)
            stop = any(cb(net, epoch, dict(logs)) is False for cb in self.callbacks)
            stop = stop or halt
            end = stop or epoch == self.epochs
            if self.checkpoints is not None and (end or epoch % self.checkpoints.every == 0):
                self.checkpoints.write(net.state, epoch, self.identity, finished=end)
            if stop:
                break
        self._restore_best()

    def _eager_batches(self, xs, ts, wts, batches, totals, optimizer, loss_sum, bar, interrupt) -> int:
        """The epoch's steps one by one from Python (the shuffled data in xs, ts, wts); returns how many ran
        (fewer after Ctrl-C)."""
        net, comm, n = self.net, self.comm, batches[-1][1]
        buckets = None if comm is None else self._buckets
        every = max(1, len(batches) // PROGRESS_UPDATES)
        for i, (start, stop) in enumerate(batches):
            lo, hi = (start, stop) if comm is None else _shard(comm, start, stop)
            batch_weights = None if wts is None else wts[lo:hi]
            if comm is None:
                net.backprop_sum(xs[lo:hi], None if ts is None else ts[lo:hi], loss_sum, weights=batch_weights)
            else:
                net.backprop_sum(xs[lo:hi], None if ts is None else ts[lo:hi], loss_sum, buckets.layer_done,
                                 batch_weights)
                buckets.finish()
            optimizer.step(net.gradient(), 1.0 / totals[i] if totals[i] > 0 else 0.0)
            if bar is not None and (i % every == 0 or stop == n):
                bar.update(stop - bar.n)
            if interrupt["hit"]:
                return i + 1
        return len(batches)

    def _compiled_batches(self, program: TrainingProgram, order: Any, count: int, loss_sum: Any, bar: Any,
                          interrupt: dict) -> int:
        """The epoch's ``count`` batches in chunks, each one call of the compiled ``program``, sized to take
        about CHUNK_SECONDS; returns how many ran (fewer after Ctrl-C, which finishes the chunk under way, or
        one batch where it came before the epoch began, as in the step-by-step loop)."""
        done, n = 0, len(order)
        while done < count:
            chunk = 1 if interrupt["hit"] else min(self._chunk, count - done)
            started = time.perf_counter()
            program.run(order, done, chunk, loss_sum)
            if chunk == self._chunk:  # an epoch's shorter tail says less about the time per batch
                self._chunk = _next_chunk(chunk, time.perf_counter() - started, program.granule)
            done += chunk
            if bar is not None:
                bar.update(min(done * self.batch_size, n) - bar.n)
            if interrupt["hit"]:
                break
        return done

    def _program(self, x: Any, target: Any, weights: Any, optimizer: Optimizer) -> TrainingProgram | None:
        """This fit's compiled program, None for the step-by-step loop; ``net.training_path`` says which."""
        net = self.net
        self._buckets = None if self.comm is None else GradientBuckets(net, self.comm)
        program, reason = None, self._eager_reason(x, weights)
        if not reason:
            program, reason = net.ops.training_program(self._plan(x, target, optimizer))
        net.training_path = "compiled" if program is not None else f"eager: {reason}"
        self._chunk = program.granule if program is not None else 1
        return program

    def _eager_reason(self, x: Any, weights: Any) -> str:
        """Why this fit runs step by step whatever the backend ("" where it need not)."""
        if self.compiled is False:
            return "compiled=False"
        if self.comm is not None:
            return "distributed training sums the gradient across ranks after every batch"
        if weights is not None:
            return "sample_weight is given (the compiled steps weigh every sample equally)"
        if is_sparse(x):
            return "X is sparse (the compiled steps gather rows of a dense X)"
        return ""

    def _plan(self, x: Any, target: Any, optimizer: Optimizer) -> ProgramPlan:
        """The fit as a program sees it; a batch size beyond the data is the data's size (the same batches, and
        the program's buffers are sized by it)."""
        net = self.net
        return ProgramPlan(sizes=list(net.sizes), activations=net.layer_activations, cost=net.cost,
                           dtype=net.dtype, params=net.parameters(), grad=net.gradient(), n_weights=net.n_weights,
                           optimizer=optimizer, x=x, target=target, batch_size=min(self.batch_size, x.shape[0]))

    def _require_compiled(self, x: Any, target: Any, weights: Any) -> None:
        """compiled=True: ValueError saying why where this fit cannot run compiled (before anything changes:
        the plan gets an optimizer of its own)."""
        reason = self._eager_reason(x, weights)
        if not reason:
            net = self.net
            stand_in = OPTIMIZERS[self.optimizer_name](net.ops, net.parameters(), net.n_weights)
            _, reason = net.ops.training_program(self._plan(x, target, stand_in))
        if reason:
            raise ValueError(f"compiled=True, but this fit cannot run compiled: {reason}")

    def _end_epoch(self, optimizer: Optimizer, n: int, epoch: int, logs: dict) -> bool:
        """The optimizer's schedule and stopping rule after ``epoch``; True when the rule stops training
        (said on stderr with progress on). Keeps the parameters of an epoch better than any before."""
        value = None if self.watch is None else self.watch.value(self.net, logs)
        if value is not None and self.comm is not None:
            shared = np.array([value])  # every rank takes rank 0's decisions
            self.comm.broadcast(shared, root=0)
            value = float(shared[0])
        best = optimizer.best
        message = optimizer.epoch_end(n, value)
        if self._best is not None and optimizer.best < best:
            self.net.ops.copy(self.net.parameters(), out=self._best)
        if message and self.progress:
            say(f"epoch {epoch}: {self.watch.name}: {message}")
        return value is not None and optimizer.stopped

    def _restore_best(self) -> None:
        """restore_best: the parameters of the best epoch back into the network."""
        if self._best is not None:
            self.net.ops.copy(self._best, out=self.net.parameters())

    def _checkpoint_restart_point(self) -> None:
        """Training stopped by an exception (Ctrl-C, divergence, …): checkpoint the end of the last
        completed epoch, from the copy taken when the current epoch began, unless that one exists already."""
        point = self._restart_point
        if self.checkpoints is None or point is None or point[0] <= self.checkpoints.last_written:
            return
        epoch, snapshot, steps, shuffle_state = point
        try:
            self.checkpoints.write(lambda: self._restart_state(epoch, snapshot, steps, shuffle_state), epoch,
                                   self.identity, finished=False)
        except Exception as exc:
            say(f"could not write the checkpoint of epoch {epoch}: {exc}")

    def _restart_state(self, epoch: int, snapshot: list, steps: int, shuffle_state: dict) -> ModelState:
        """The network's state at the end of ``epoch``, from the copy of its parameters and optimizer state
        taken (with the optimizer's steps and the shuffle generator's state) when the next epoch began."""
        state, to_host = self.net.state(), self.net.ops.to_numpy
        state.params = to_host(snapshot[0])
        state.optimizer.buffers = {b: to_host(a) for b, a in zip(state.optimizer.buffers, snapshot[1:])}
        state.optimizer.t, state.shuffle = steps, shuffle_state
        state.optimizer.settings = dict(self._restart_settings)  # the schedule as it was at that epoch's end
        state.history = {key: values[:epoch] for key, values in state.history.items()}
        return state

    def _check_finite(self, epoch: int, loss: float, state: list, snapshot: list, optimizer: Any,
                      steps_before: int) -> None:
        """On a NaN/inf loss or parameter, put the parameters and the optimizer state back as they were
        at the start of ``epoch`` and raise FloatingPointError."""
        ops, net = self.net.ops, self.net
        if np.isfinite(loss) and ops.all_finite(net.parameters()):
            return
        for saved, target in zip(snapshot, state):
            ops.copy(saved, out=target)
        optimizer.t = steps_before
        raise FloatingPointError(
            f"training diverged in epoch {epoch}: the loss became {loss} (NaN or infinite); the "
            f"parameters and optimizer state were restored to their values at the end of epoch "
            f"{epoch - 1}. Try a smaller lr.")

    def _print_epoch(self, epoch: int, logs: dict) -> None:
        if self.progress:
            text = "  ".join(f"{k} {v:.4f}" for k, v in logs.items())
            print(f"epoch {epoch}/{self.epochs}  {text}", file=sys.stderr, flush=True)


class _ShuffledRows:
    """The rows of a sparse CSR ``x`` in the epoch's ``order``, gathered a mini-batch at a time: ``[lo:hi]`` is
    x[order[lo:hi]] (O(the batch's nonzeros)), so no shuffled copy of the data set is made."""

    def __init__(self, x: Any, order: Any) -> None:
        self.x, self.order = x, order

    def __getitem__(self, rows: slice) -> Any:
        return self.x[self.order[rows]]


class Monitor:
    """What the stopping rule watches, as a value to minimise: a key of the history (negated where higher is
    better: accuracy, R²), or what ``fn(net, logs)`` returns."""

    def __init__(self, monitor: str | Callable | None, keys: list[str]) -> None:
        if monitor is None:
            monitor = "val_loss" if "val_loss" in keys else "loss"
        if isinstance(monitor, str) and monitor not in keys:
            hint = "" if len(keys) > 1 else " (the val_ metrics need validation_data)"
            raise ValueError(f"monitor {monitor!r} is not recorded by this fit, which records "
                             f"{', '.join(keys)}{hint}")
        self.source = monitor
        self.name = monitor if isinstance(monitor, str) else getattr(monitor, "__qualname__", "monitor")
        higher = isinstance(monitor, str) and monitor.rsplit("_", 1)[-1] in HIGHER_IS_BETTER
        self.sign = -1.0 if higher else 1.0

    def value(self, net: Any, logs: dict) -> float:
        """This epoch's value, lower being better."""
        value = logs[self.source] if isinstance(self.source, str) else self.source(net, dict(logs))
        return self.sign * float(value)


class GradientBuckets:
    """The flat gradient in pieces for the one sum across ranks per step.

    Where the communicator overlaps transfers with compute (NCCL), each weight gradient ∂C/∂Wˡ of
    BUCKET_BYTES or more, from layer 1 on, is summed as soon as BP4 has produced it, while the backward
    pass goes on through the lower layers; the rest of the buffer (layer 0's ∂C/∂W, which is ready last,
    small layers, all biases) is summed when backprop is done. Elsewhere the whole buffer is one piece.
    """

    def __init__(self, net: Any, comm: Any) -> None:
        self.comm = comm
        self.early: dict[int, Any] = {}
        if comm.overlaps_compute:
            self.early = {l: g for l, g in enumerate(net.nabla_w) if l > 0 and g.nbytes >= BUCKET_BYTES}
        self.rest, start, offset = [], 0, 0
        for l, g in enumerate(net.nabla_w):
            if l in self.early:
                if offset > start:
                    self.rest.append(net.gradient()[start:offset])
                start = offset + g.size
            offset += g.size
        self.rest.append(net.gradient()[start:])
        self.pending: list[Callable[[], None]] = []

    def layer_done(self, l: int) -> None:
        """Start summing layer l's weight gradient when it is a bucket of its own."""
        if l in self.early:
            self.pending.append(self.comm.allreduce_sum_start(self.early[l]))

    def finish(self) -> None:
        """Sum the rest and wait for every piece: the gradient is then the sum over all ranks."""
        self.pending += [self.comm.allreduce_sum_start(piece) for piece in self.rest]
        for wait in self.pending:
            wait()
        self.pending = []


def _check_lbfgs(comm: Any, checkpoint: Any, lr_schedule: Any, monitor: Any, restore_best: Any,
                 compiled: Any) -> None:
    """ValueError for what ``optimizer="lbfgs"`` cannot be combined with (before anything changes)."""
    refused = [(comm is not None, "distributed training (it sums mini-batch gradients across ranks)"),
               (checkpoint is not None, "checkpoint (scipy's L-BFGS-B state cannot be saved and resumed)"),
               (lr_schedule != "constant", f"lr_schedule={lr_schedule!r} (its line search sets every step)"),
               (monitor is not None or restore_best is not False,
                "monitor or restore_best (tol is its gradient tolerance, not a stopping rule on a metric)"),
               (compiled is True, "compiled=True (scipy drives each evaluation from Python)")]
    for refuse, what in refused:
        if refuse:
            raise ValueError(f"optimizer='lbfgs' cannot be combined with {what}")
    lbfgs.require_scipy()


def _next_chunk(chunk: int, seconds: float, granule: int) -> int:
    """The next chunk's batch count, aiming at CHUNK_SECONDS (growing at most 8× a chunk, as the first calls
    may include compiling), a multiple of ``granule``."""
    wanted = chunk * CHUNK_SECONDS / max(seconds, 1e-6)
    chunk = int(min(max(wanted, chunk / 8, 1), chunk * 8))
    return max(granule, chunk // granule * granule)


def _batch_totals(cumulative: np.ndarray, batches: list[tuple[int, int]]) -> list[float]:
    """Σ wₓ of each batch [start, stop) from the running sum of the (shuffled) weights."""
    return [float(cumulative[stop - 1] - (cumulative[start - 1] if start else 0.0))
            for start, stop in batches]


def _shard(comm: Any, start: int, stop: int) -> tuple[int, int]:
    """This rank's rows of the global batch [start, stop)."""
    lo, hi = comm.shard(stop - start)
    return start + lo, start + hi


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int, desc: str, unit: str) -> Iterator[Any]:
    """A tqdm bar over ``total`` ``unit``: an epoch's samples, or L-BFGS's iterations (None when disabled or
    tqdm is not installed)."""
    if not enabled:
        yield None
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        yield None
        return
    with tqdm(total=total, desc=desc, unit=unit, unit_scale=True,
              leave=True, file=sys.stderr) as bar:
        yield bar


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[dict]:
    """Turn the first Ctrl-C into a flag checked between batches; a second one interrupts at once."""
    state = {"hit": False}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum, frame):
        if state["hit"]:
            raise KeyboardInterrupt
        state["hit"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)
