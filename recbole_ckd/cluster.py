"""Ray, the engine of the commands that run many runs (sweeps and leaderboards): the import that
says how to install it, the connection to a cluster (or a local Ray), the devices a task was given.
"""

import contextlib
import os
import signal

from recbole_ckd.errors import UserError

INSTALL = ('pip install "ray[tune]" (this project\'s pinned stack: pip install -e ., which includes '
           "ray[tune]==2.6.3; the modern stack: requirements-modern.txt, README \"Compatibility\")")


def require_ray(flag, tune=False):
    """Ray (and Ray Tune with ``tune``), or one error line naming ``flag`` and how to install it."""
    try:
        import ray

        if tune:
            import ray.tune  # noqa: F401
    except ModuleNotFoundError:
        raise UserError(f"{flag} runs with Ray{' Tune' if tune else ''}, which is not installed: {INSTALL}.") from None
    return ray


@contextlib.contextmanager
def ray_session(address, flag, gpus=0.0):
    """Connected to the cluster at ``address`` (``auto``: the one this node belongs to) or, with
    none, to a new local Ray over this machine's CPUs (and GPUs); shut down on leaving. A task of
    ``gpus`` GPUs that the cluster cannot hold is refused (Ray would wait for it forever)."""
    ray = require_ray(flag)
    try:
        ray.init(address=address, include_dashboard=False, ignore_reinit_error=True,
                 **({} if address else {"num_cpus": os.cpu_count()}))
    except Exception as err:
        if not address:  # a local Ray that would not start: not the user's address
            raise
        raise UserError(
            f"--ray_address={address}: no Ray cluster could be joined ({' '.join(str(err).split())[:200]}). Start one "
            "with 'ray start --head'; a cluster of Ray >= 2.59 uses token authentication, so on this machine set "
            "RAY_AUTH_MODE=token and give the head's token (RAY_AUTH_TOKEN, or the file ~/.ray/auth_token; "
            "'ray get-auth-token' prints it on the head), or run on a node of the cluster with --ray_address=auto."
        ) from None
    try:
        available = ray.cluster_resources().get("GPU", 0.0) if gpus else 0.0
        if gpus > available:
            raise UserError(f"--gpus_per_trial={gpus:g}: the Ray cluster{f' at {address}' if address else ''} has "
                            f"{available:g} GPU(s), so a task of {gpus:g} would never start; give at most {available:g}.")
        yield ray
    finally:
        ray.shutdown()


def assigned_devices():
    """The config keys of a run inside a Ray task or trial: the GPUs Ray assigned to it (RecBole's Config
    writes ``gpu_id`` into ``CUDA_VISIBLE_DEVICES``), none when it was given none."""
    import ray

    gpus = ray.get_gpu_ids()
    return {"gpu_id": ",".join(str(int(g)) for g in gpus), "use_gpu": bool(gpus)}


@contextlib.contextmanager
def sigterm_as_sigint():
    """SIGTERM (a scheduler's stop, ``kill``) handled like Ctrl-C: a sweep's Ray saves its state, a
    leaderboard keeps the cells that finished. On leaving, SIGINT gets its handler back: Ray Tune's
    (the first Ctrl-C stops the sweep) stays installed after a sweep that no Ctrl-C stopped, and would
    swallow the next Ctrl-C."""
    def forward(signum, frame):
        os.kill(os.getpid(), signal.SIGINT)

    try:
        previous = signal.signal(signal.SIGTERM, forward)
    except ValueError:  # not the main thread: nothing to install
        yield
        return
    previous_sigint = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_sigint)
