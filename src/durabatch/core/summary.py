"""What a run reports when it ends (the CLI prints it; `run()` returns it)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ExitCode
from .failfast import REASON as FAILFAST
from .plan import Plan


@dataclass(frozen=True)
class RunSummary:
    exit_code: int
    total: int | None
    already_done: int
    done: int  # committed by this run
    failed: int  # failed in this run
    failed_total: int  # failures in the ledger for the whole job
    stopped: str | None  # why the run stopped early, if it did
    elapsed: float
    run_dir: str

    def __str__(self) -> str:
        state = {ExitCode.DONE: "finished", ExitCode.FAILED: "finished with failed items",
                 ExitCode.STOPPED: f"stopped early ({self.stopped})"}
        if self.stopped == FAILFAST:
            state[ExitCode.FAILED] = f"stopped early ({self.stopped})"
        text = (f"{state.get(self.exit_code, self.exit_code)}: {self.done:,} done in this run, "
                f"{self.already_done:,} before, {self.failed_total:,} failed; {self.elapsed:.1f}s")
        if self.exit_code == ExitCode.STOPPED:
            text += f". Run the same command again to resume ({self.run_dir})."
        elif self.failed_total:
            text += f". See `durabatch export {self.run_dir} --failed --to failed.jsonl`."
        return text


def resume_message(plan: Plan) -> list[str]:
    if plan.nothing_to_do:
        return [f"nothing to do: all {plan.total:,} items are already finished "
                f"({plan.already_failed:,} of them failed)"]
    if plan.already_done or plan.already_failed:
        return [f"resuming: {plan.already_done:,} items already done, {plan.already_failed:,} failed earlier, "
                f"{plan.total - plan.already_done - plan.already_failed:,} to go" if plan.total is not None
                else f"resuming: {plan.already_done:,} items already done"]
    return []
