"""Progress of a long step: a tqdm bar and, inside a Prefect run, a progress artifact."""

from __future__ import annotations


class Progress:
    """Work done of a run's step: a tqdm bar (`show`) and, inside a Prefect run, a progress
    artifact `key` for the UI, moved when the done share passes a whole percent (so a long
    training logs at most ~100 updates). Outside Prefect (torchrun ranks) only the bar."""

    def __init__(self, total: int, *, key: str, desc: str, unit: str, what: str,
                 done: int = 0, show: bool = False):
        from prefect.context import get_run_context
        from tqdm.auto import tqdm

        self.total, self.done = total, done
        self.bar = tqdm(total=total, initial=done, desc=desc, unit=unit, disable=not show)
        self.artifact, self._shown = None, self._whole()
        try:
            get_run_context()
        except Exception:  # noqa: BLE001 - MissingContextError: not in a flow or task run
            return
        from prefect.artifacts import create_progress_artifact

        self.artifact = create_progress_artifact(self.percent(), key=key,
                                                 description=f"{what} (of {total})")

    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 100.0

    def _whole(self) -> int:
        return int(self.percent())

    def advance(self, n: int = 1) -> None:
        self.update_to(self.done + n)

    def update_to(self, done: int) -> None:
        self.bar.update(done - self.done)
        self.done = done
        if self.artifact is not None and self._whole() > self._shown:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self.artifact, self.percent())
        self._shown = max(self._shown, self._whole())

    def close(self) -> None:
        self.bar.close()
