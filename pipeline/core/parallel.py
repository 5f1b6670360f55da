"""Hand units of work (usually scenes) to Ray, or run them in-process with ``local=True``.

Ray discipline: a bounded number of tasks in flight; infrastructure failures (a worker died, a node was lost) are
retried by Ray up to ``retries`` times; application failures (bad input) come back as the exception, so the driver
records them as error rows and goes on. Results are yielded as they complete; callers that write outputs sort
by unit so the bytes on disk do not depend on timing or the number of workers.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from tqdm import tqdm

U = TypeVar("U")


def init_ray(workers: int, address: str | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False,
                 configure_logging=False)


def map_units(fn: Callable[[U], Any], units: Sequence[U], *, local: bool = False, workers: int = 2,
              ray_address: str | None = None, desc: str = "", retries: int = 2,
              num_cpus_per_task: float = 1.0, progress: bool = True,
              unit_name: str = "scenes") -> Iterator[tuple[U, Any, BaseException | None]]:
    """Yield ``(unit, result, None)`` or ``(unit, None, exception)`` for every unit, in completion order."""
    bar = tqdm(total=len(units), desc=desc, unit=f" {unit_name}", disable=not progress or not units,
               dynamic_ncols=True)
    try:
        if local or not units:
            for unit in units:
                try:
                    yield unit, fn(unit), None
                except Exception as exc:  # noqa: BLE001 - recorded as an error row by the caller
                    yield unit, None, exc
                bar.update(1)
            return
        import ray
        from ray.exceptions import RayTaskError

        init_ray(workers, ray_address)
        remote = ray.remote(num_cpus=num_cpus_per_task, max_retries=retries)(_apply)
        fn_ref = ray.put(fn)      # any picklable callable (a function, or an object with __call__), sent once
        max_in_flight = max(1, 2 * workers)
        pending: dict[Any, U] = {}
        todo: Iterable[U] = iter(units)
        exhausted = False
        while pending or not exhausted:
            while not exhausted and len(pending) < max_in_flight:
                try:
                    unit = next(todo)  # type: ignore[call-overload]
                except StopIteration:
                    exhausted = True
                    break
                pending[remote.remote(fn_ref, unit)] = unit
            if not pending:
                break
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            unit = pending.pop(ref)
            try:
                yield unit, ray.get(ref), None
            except RayTaskError as exc:
                cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
                yield unit, None, cause
            except Exception as exc:  # noqa: BLE001 - worker lost after retries etc.
                yield unit, None, exc
            bar.update(1)
    finally:
        bar.close()


def _apply(fn: Callable[[U], Any], unit: U) -> Any:
    return fn(unit)
