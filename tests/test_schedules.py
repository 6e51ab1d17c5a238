"""Learning-rate schedules and the stopping rule, owned by the optimizer: invscaling's η per epoch, adaptive's
÷5 and its end at 1e-6, tol / n_iter_no_change ending ``Network.fit`` normally, restore_best, the estimator's
trajectory from the same public settings, bad arguments named, and a checkpointed run with a schedule
resumed exactly after an interruption."""

from __future__ import annotations

import json
import os
import re
import signal
import warnings

import numpy as np
import pytest

import gpubp
from gpubp.backend import get_ops
from gpubp.checkpoint import read_checkpoint
from gpubp.optimizers import OPTIMIZERS, make_optimizer
from gpubp.schedules import MIN_ADAPTIVE_LR, NOTHING_MONITORED

import checkpoint_worker as worker


def problem(seed=2):
    rng = np.random.default_rng(7)
    X, y = rng.normal(size=(60, 5)), rng.integers(0, 3, 60)
    net = gpubp.Network([5, 8, 3], activation="tanh", output="softmax", cost="log_likelihood", device="cpu",
                        dtype="float64", seed=seed)
    return net, X[:45], y[:45], (X[45:], y[45:])


def recorder():
    """A callback recording the optimizer's η for the next epoch after each epoch."""
    lrs = []
    return lrs, lambda net, epoch, logs: lrs.append(net.optimizer.current_lr)


def test_invscaling_lr_per_epoch_is_the_formula_and_the_steps_use_it():
    net, X, y, _ = problem()
    lrs, record = recorder()
    net.fit(X, y, epochs=4, batch_size=9, lr=0.2, optimizer="sgd", lr_schedule="invscaling", power_t=0.3,
            seed=5, progress=False, callbacks=[record])
    assert lrs == [0.2 / (45 * e + 1) ** 0.3 for e in range(1, 5)]
    # the same steps: one fit per epoch at that epoch's η, the shuffle continuing
    stepwise, _, _, _ = problem()
    for epoch, lr in enumerate([0.2] + lrs[:3]):
        stepwise.fit(X, y, epochs=1, batch_size=9, lr=lr, optimizer="sgd", seed=5 if epoch == 0 else None,
                     progress=False)
    np.testing.assert_array_equal(stepwise.parameters(), net.parameters())


def constant_monitor(net, logs):
    return 1.0  # never improves after the first epoch


def test_adaptive_divides_by_5_after_n_iter_no_change_epochs_and_stops_at_1e_6(capsys):
    net, X, y, _ = problem()
    lrs, record = recorder()
    history = net.fit(X, y, epochs=100, batch_size=9, lr=1e-3, optimizer="momentum", lr_schedule="adaptive",
                      tol=0.5, n_iter_no_change=2, monitor=constant_monitor, progress=True, callbacks=[record])
    # epoch 1 sets the best; every second epoch after it fires the rule: η ÷ 5 while η > 1e-6, then stop
    divided = [1e-3]
    while divided[-1] > MIN_ADAPTIVE_LR:
        divided.append(divided[-1] / 5)
    expected = [1e-3] * 2 + [lr for lr in divided[1:] for _ in range(2)] + [divided[-1]]
    assert lrs == expected and len(history["loss"]) == len(expected) == 13
    err = capsys.readouterr().err
    assert err.count("learning rate divided by 5") == 5
    assert ("epoch 13: constant_monitor: no improvement by tol=0.5 or more for 2 epochs in a row at the "
            "learning rate 3.2e-07 <= 1e-06: stopping") in err
    assert net.optimizer.stopped and net.history is history


def test_tol_stops_fit_early_with_a_message_and_the_history_of_the_epochs_done(capsys):
    net, X, y, validation = problem()
    history = net.fit(X, y, epochs=50, batch_size=9, lr=0.05, optimizer="adam", validation_data=validation,
                      tol=10.0, n_iter_no_change=3, seed=1, progress=True)
    # epoch 1 improves on nothing monitored; epochs 2-4 do not improve val_loss by 10
    assert {key: len(values) for key, values in history.items()} == \
        {"loss": 4, "val_loss": 4, "val_accuracy": 4}
    assert net.history is history and net.optimizer.best == min(history["val_loss"])
    assert "epoch 4: val_loss: no improvement by tol=10 or more for 3 epochs in a row: stopping" in \
        capsys.readouterr().err
    quiet, _, _, _ = problem()
    assert quiet.fit(X, y, epochs=50, batch_size=9, lr=0.05, optimizer="adam", validation_data=validation,
                     tol=10.0, n_iter_no_change=3, seed=1, progress=False) == history
    assert capsys.readouterr().err == ""


def test_a_score_is_watched_as_higher_is_better():
    net, X, y, validation = problem()
    history = net.fit(X, y, epochs=30, batch_size=9, lr=0.05, optimizer="adam", validation_data=validation,
                      tol=0.0, n_iter_no_change=30, monitor="val_accuracy", progress=False)
    assert net.optimizer.best == -max(history["val_accuracy"])


def test_restore_best_ends_with_the_best_epochs_parameters():
    net, X, y, _ = problem()
    values = iter([3.0, 1.0, 2.0, 5.0, 4.0])
    kept = []
    net.fit(X, y, epochs=5, batch_size=9, lr=0.05, optimizer="sgd", tol=0.0, n_iter_no_change=10,
            monitor=lambda net, logs: next(values), restore_best=True, progress=False,
            callbacks=[lambda net, epoch, logs: kept.append(np.array(net.parameters()))])
    np.testing.assert_array_equal(net.parameters(), kept[1])  # epoch 2's value 1.0 is the best
    # nothing beats the best the fit starts with: the parameters it started from
    start = np.array(net.parameters())
    net.fit(X, y, epochs=3, batch_size=9, lr=0.05, optimizer="sgd", tol=0.0, n_iter_no_change=10,
            monitor=constant_monitor, restore_best=True, optimizer_options={"best": 0.5}, progress=False)
    np.testing.assert_array_equal(net.parameters(), start)


def test_ctrl_c_with_restore_best_ends_with_the_best_epochs_parameters():
    net, X, y, _ = problem()
    values = iter([1.0, 2.0, 0.5])
    kept = []

    def press_ctrl_c(net, epoch, logs):
        kept.append(np.array(net.parameters()))
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGINT)  # seen after the next batch, mid-epoch 3

    with pytest.raises(KeyboardInterrupt, match="interrupted in epoch 3"):
        net.fit(X, y, epochs=5, batch_size=9, lr=0.05, optimizer="sgd", tol=0.0, n_iter_no_change=10,
                monitor=lambda net, logs: next(values), restore_best=True, progress=False, callbacks=[press_ctrl_c])
    np.testing.assert_array_equal(net.parameters(), kept[0])  # epoch 3 was cut short: never monitored


def test_each_fit_starts_the_schedule_and_optimizer_options_continue_one():
    kwargs = dict(batch_size=9, lr=0.1, optimizer="nesterov", lr_schedule="adaptive", tol=0.05,
                  n_iter_no_change=1, progress=False)
    whole, X, y, _ = problem()
    whole.fit(X, y, epochs=8, seed=3, **kwargs)
    split, _, _, _ = problem()
    split.fit(X, y, epochs=5, seed=3, **kwargs)
    running = {key: split.optimizer.settings()[key] for key in OPTIMIZERS["nesterov"].running}
    assert running["current_lr"] < 0.1 and running["samples_seen"] == 5 * 45
    split.fit(X, y, epochs=3, optimizer_options=running, **kwargs)
    np.testing.assert_array_equal(split.parameters(), whole.parameters())
    assert split.optimizer.settings() == whole.optimizer.settings()
    split.fit(X, y, epochs=1, **kwargs)  # a fit of its own starts at η₀ again
    assert split.optimizer.samples_seen == 45 and split.optimizer.current_lr == 0.1


def test_settings_are_json_values_and_inf_is_stored_as_the_largest_float():
    opt = make_optimizer("adam", get_ops("cpu"), np.zeros(4), 2, lr=0.3)
    assert opt.current_lr == 0.3 and opt.best == NOTHING_MONITORED
    json.dumps(opt.settings(), allow_nan=False)
    opt.configure(best=-np.inf)
    assert opt.best == -NOTHING_MONITORED
    # scikit-learn's rule: a NaN value leaves best as it is and does not count as no improvement
    opt.configure(best=1.0, no_improvement_count=3, tol=0.1, n_iter_no_change=5)
    assert opt.epoch_end(10, float("nan")) == "" and (opt.best, opt.no_improvement_count) == (1.0, 0)
    assert opt.epoch_end(10, 0.95) == "" and (opt.best, opt.no_improvement_count) == (0.95, 1)


# ---- the estimator: the same trajectory from the same public settings -------------------------------------
def test_the_estimator_and_fit_give_the_same_trajectory_from_the_same_settings(monkeypatch):
    sklearn_mlp = pytest.importorskip("gpubp.sklearn")
    from sklearn.datasets import make_classification

    X, y = make_classification(90, 5, n_informative=3, n_classes=3, random_state=0)
    started = {}
    fit = gpubp.Network.fit

    def spy(net, X, Y, **kwargs):
        started.update(params=np.array(net.parameters()), seed=kwargs["seed"])
        return fit(net, X, Y, **kwargs)

    monkeypatch.setattr(gpubp.Network, "fit", spy)
    est = sklearn_mlp.MLPClassifier(hidden_layer_sizes=(7,), solver="sgd", learning_rate="adaptive",
                                    learning_rate_init=0.3, tol=1e-2, n_iter_no_change=2, alpha=0.0,
                                    batch_size=20, max_iter=300, random_state=0, dtype="float64", device="cpu")
    est.fit(X, y)
    monkeypatch.undo()
    net = gpubp.Network([5, 7, 3], activation="relu", output="softmax", cost="log_likelihood", device="cpu",
                        dtype="float64")
    net.parameters()[...] = started["params"]
    history = net.fit(X, y, epochs=300, batch_size=20, lr=0.3, optimizer="nesterov", momentum=0.9,
                      seed=started["seed"], progress=False, lr_schedule="adaptive", tol=1e-2,
                      n_iter_no_change=3)  # scikit-learn stops when its count exceeds n_iter_no_change
    assert est.n_iter_ == len(history["loss"]) < 300 and est.loss_curve_ == history["loss"]
    assert est._learning_rate == net.optimizer.current_lr <= MIN_ADAPTIVE_LR
    np.testing.assert_array_equal(est.network_.parameters(), net.parameters())


# ---- bad arguments ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(lr_schedule="cosine"), "lr_schedule must be one of constant, invscaling, adaptive; got 'cosine'"),
    (dict(power_t=-1), "power_t must be a finite number >= 0"),
    (dict(tol=-0.1), "tol must be a finite number >= 0"),
    (dict(tol="small"), "tol must be a finite number >= 0"),
    (dict(tol=0.1, n_iter_no_change=0), "n_iter_no_change must be an integer >= 1"),
    (dict(n_iter_no_change=2.5), "n_iter_no_change must be an integer >= 1"),
    (dict(tol=0.1, monitor=3), "monitor must be a key of the history"),
    (dict(monitor="loss"), "monitor needs the stopping rule: give tol"),
    (dict(tol=0.1, monitor="val_loss"), "monitor 'val_loss' is not recorded by this fit, which records loss "
                                        r"\(the val_ metrics need validation_data\)"),
    (dict(tol=0.1, restore_best="yes"), "restore_best must be True or False"),
    (dict(restore_best=True), "restore_best needs the stopping rule: give tol"),
    (dict(tol=0.1, restore_best=True, checkpoint="ckpt"), "restore_best .* cannot be combined with checkpoint"),
    (dict(optimizer_options={"beta1": 0.5}), "optimizer_options: the sgd optimizer has no setting 'beta1'; "
                                             "the settings it takes there: decay_per_sample, current_lr, "
                                             "samples_seen, best, no_improvement_count"),
    (dict(optimizer_options={"lr": 0.5}), "optimizer_options: 'lr' is an argument of fit; pass lr=... instead"),
    (dict(optimizer="adam", optimizer_options={"beta2": 1.5}), "optimizer_options: beta2 must be a finite "
                                                                "number >= 0 and < 1.0; got 1.5"),
    (dict(optimizer="adam", optimizer_options={"eps_on_corrected_v": 1}), "eps_on_corrected_v must be True"),
    (dict(optimizer_options={"samples_seen": -1}), "samples_seen must be an integer >= 0"),
    (dict(optimizer_options={"best": float("nan")}), "best must be a number"),
    (dict(optimizer_options=[("best", 1.0)]), "optimizer_options must be a dict"),
])
def test_bad_schedule_arguments_are_named_and_change_nothing(tmp_path, kwargs, message):
    net, X, y, _ = problem()
    before = np.array(net.parameters())
    kwargs = dict(dict(optimizer="sgd", batch_size=9, lr=0.1, epochs=2), **kwargs)
    if "checkpoint" in kwargs:
        kwargs["checkpoint"] = tmp_path / kwargs["checkpoint"]
    with pytest.raises(ValueError, match=message):
        net.fit(X, y, **kwargs)
    assert net.optimizer is None and net.history == {} and not os.listdir(tmp_path)
    np.testing.assert_array_equal(net.parameters(), before)


@pytest.mark.parametrize("here, message", [
    (dict(), "lr_schedule 'invscaling' there, None here; power_t 0.5 there, None here"),
    (dict(lr_schedule="invscaling", power_t=0.25), "power_t 0.5 there, 0.25 here"),
    (dict(lr_schedule="invscaling", tol=0.1), "tol None there, 0.1 here; n_iter_no_change None there, 10 here; "
                                              "monitor None there, 'val_loss' here"),
    (dict(lr_schedule="invscaling", optimizer_options={"decay_per_sample": True}),
     """optimizer_options None there, '{"decay_per_sample": true}' here"""),
])
def test_a_checkpoint_of_another_schedule_is_refused(tmp_path, here, message):
    net, X, y, fit = worker.problem("sgd")
    net.fit(X, y, checkpoint=tmp_path, **dict(fit, epochs=3, lr_schedule="invscaling"))
    again, _, _, _ = worker.problem("sgd")
    with pytest.raises(ValueError, match=re.escape(message)):
        again.fit(X, y, checkpoint=tmp_path, **dict(fit, epochs=4, **here))


# ---- checkpoints: a schedule resumes exactly ------------------------------------------------------------
SCHEDULED = {"invscaling": dict(lr_schedule="invscaling", power_t=0.7),
             "adaptive": dict(lr_schedule="adaptive", tol=1e-2, n_iter_no_change=1),
             "adam-stopping": dict(optimizer="adam", tol=1e-3, n_iter_no_change=2, monitor="val_accuracy",
                                   optimizer_options={"beta1": 0.8})}


def scheduled(name):
    net, X, y, fit = worker.problem("momentum")
    return net, X, y, dict(fit, epochs=8, **SCHEDULED[name])


@pytest.mark.parametrize("name", SCHEDULED)
@pytest.mark.parametrize("stop", ["ctrl-c", "callback error"])
def test_a_checkpointed_schedule_resumed_after_an_interruption_equals_the_whole_run(tmp_path, name, stop):
    whole, X, y, fit = scheduled(name)
    lrs, record = recorder()
    whole.fit(X, y, callbacks=[record], **fit)
    assert len(set(lrs)) > 1 or name == "adam-stopping"

    def interrupt(net, epoch, logs):
        if epoch == 3:
            if stop == "ctrl-c":
                os.kill(os.getpid(), signal.SIGINT)  # seen after the next batch, mid-epoch 4
            else:
                raise RuntimeError("callback failed")  # after the schedule ran at epoch 3

    net, _, _, _ = scheduled(name)
    with pytest.raises(KeyboardInterrupt if stop == "ctrl-c" else RuntimeError):
        net.fit(X, y, checkpoint=tmp_path, checkpoint_every=10, callbacks=[interrupt], **fit)
    restart = 2 if stop == "callback error" else 3
    assert read_checkpoint(tmp_path / f"ckpt-00000{restart}.npz").epoch == restart
    resumed, _, _, _ = scheduled(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resumed.fit(X, y, checkpoint=tmp_path, **fit) == whole.history
    np.testing.assert_array_equal(resumed.parameters(), whole.parameters())
    assert resumed.optimizer.settings() == whole.optimizer.settings()
