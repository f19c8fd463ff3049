"""The Ray executor: one actor per model group (it loads the model once), one actor call per job.
Results flow back to the driver as they finish; the driver alone writes the store. `ray` is the
optional `ray` extra."""

from __future__ import annotations

from circuitfind.errors import ConfigError


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise ConfigError("the ray executor needs Ray: pip install 'circuitfind[ray]'") from e
    return ray


class _GroupWorker:
    """Holds one loaded model and runs its jobs."""

    def __init__(self, first_job, settings):
        from circuitfind.sweep.jobs import load_for

        self.settings = settings
        self.model, self.error = load_for(first_job, settings)

    def run(self, job):
        from circuitfind.sweep.jobs import not_loaded, run_job

        if self.model is None:
            return job.key, not_loaded(self.error)
        return job.key, run_job(self.model, job, self.settings)


def run_on_ray(groups, settings, resources):
    """Yield (job key, outcome) as Ray finishes jobs (their settings quiet: no bars in actors)."""
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(include_dashboard=False, log_to_driver=False)
    opts = {"num_cpus": 1, **resources}  # keys checked by sweep()
    actor_cls = ray.remote(**opts)(_GroupWorker)
    pending = []
    actors = []
    for jobs in groups.values():
        actor = actor_cls.remote(jobs[0], settings)
        actors.append(actor)
        pending += [actor.run.remote(job) for job in jobs]
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            yield ray.get(ready[0])
    finally:
        for a in actors:
            ray.kill(a)
        if started_here:
            ray.shutdown()
