"""What a run reports when it ends (the CLI prints it; `run()` returns it)."""

from __future__ import annotations

import html
from dataclasses import dataclass

from ..errors import ExitCode, command, run_again
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
    quarantined: int = 0  # of failed_total: items quarantined (they killed their worker or the runner K times)

    def failures_text(self) -> str:
        """`3 failed`, or `2 failed, 1 quarantined`: the counts `status` and `retry-failed` speak of."""
        failed = self.failed_total - self.quarantined
        return f"{failed:,} failed" + (f", {self.quarantined:,} quarantined" if self.quarantined else "")

    def __str__(self) -> str:
        state = {ExitCode.DONE: "finished", ExitCode.FAILED: "finished with failed items",
                 ExitCode.STOPPED: f"stopped early ({self.stopped})"}
        if self.stopped == FAILFAST:
            state[ExitCode.FAILED] = f"stopped early ({self.stopped})"
        text = (f"{state.get(self.exit_code, self.exit_code)}: {self.done:,} done in this run, "
                f"{self.already_done:,} before, {self.failures_text()}; {self.elapsed:.1f}s")
        if self.exit_code == ExitCode.STOPPED:
            text += f". {run_again().capitalize()} to resume ({self.run_dir})."
        elif self.failed_total:
            text += f". See `{command('export', self.run_dir, failed=True, to='failed.jsonl')}`."
        return text

    def __repr__(self) -> str:
        """What a notebook shows for `durabatch.run(...)` as the last expression: an answer, not a field dump."""
        return "\n".join([f"RunSummary: {self.meaning()}"] + [f"  {label:<8} {text}" for label, text in self.lines()])

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(label)}</th>"
                       f"<td style='text-align:left'>{html.escape(text)}</td></tr>" for label, text in self.lines())
        return f"<p><b>RunSummary</b>: {html.escape(self.meaning())}</p><table>{rows}</table>"

    def meaning(self) -> str:
        """The exit code in words."""
        if self.exit_code == ExitCode.DONE:
            return "finished, every item done (exit 0)"
        if self.exit_code == ExitCode.FAILED:
            why = f"stopped early ({self.stopped}), " if self.stopped else ""
            return f"{why}finished with failed items (exit 1)"
        if self.exit_code == ExitCode.STOPPED:
            return f"stopped early ({self.stopped}), resumable (exit 75)"
        return f"exit {self.exit_code}"

    def lines(self) -> list[tuple[str, str]]:
        """(label, text) rows: counts, time and rate, where the results are and what to do next."""
        seen = self.done + self.failed
        rate = f", {seen / self.elapsed:,.1f} items/s" if self.elapsed > 0 and seen else ""
        total = f"{self.total:,} items: " if self.total is not None else ""
        rows = [("items", f"{total}{self.done:,} done in this run, {self.already_done:,} finished before, "
                          f"{self.failures_text()} in all"),
                ("time", f"{self.elapsed:.2f}s{rate}" if self.elapsed < 10 else f"{self.elapsed:,.0f}s{rate}"),
                ("results", f"{self.run_dir}/shards/: files that pandas, polars and duckdb read as they are"),
                ("export", f"{command('export', self.run_dir, to='results.parquet')}: one file, in source order")]
        if self.exit_code == ExitCode.STOPPED:
            rows.append(("next", f"{run_again()} to resume; what was committed is kept"))
        elif self.failed_total:
            rows.append(("failed", f"{command('export', self.run_dir, failed=True, to='failed.jsonl')} lists them "
                                   "(key, error, attempts)"))
            rows.append(("next", f"fix the cause, then {command('retry-failed', self.run_dir)} and {run_again()} "
                                 "to redo them"))
        return rows


def resume_message(plan: Plan) -> list[str]:
    if plan.nothing_to_do:
        return [f"nothing to do: all {plan.total:,} items are already finished "
                f"({plan.already_failed:,} of them failed)"]
    if plan.already_done or plan.already_failed:
        return [f"resuming: {plan.already_done:,} items already done, {plan.already_failed:,} failed earlier, "
                f"{plan.total - plan.already_done - plan.already_failed:,} to go" if plan.total is not None
                else f"resuming: {plan.already_done:,} items already done"]
    return []
