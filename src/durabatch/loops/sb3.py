"""stable-baselines3: checkpoint model, replay buffer and timestep counter at rollout boundaries; resume
`learn()` to the same total timesteps; stop cleanly (exit 75) on SIGTERM, SIGUSR1, Ctrl-C or a deadline. Each
finished episode's reward and length are logged by timestep (ckpt.log: `status`, `report` and `dashboard` plot
them) and a progress line shows timesteps/s, the ETA and the time to the deadline.

    model = resume(run_dir, PPO, env) or PPO("MlpPolicy", env, n_steps=256)
    learn(model, total_timesteps=100_000, run_dir=run_dir, every_timesteps=2048, deadline="11h30m")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import require
from .checkpointer import EXIT_STOPPED, CallableState, Checkpointer


def _checkpointer(run_dir: str | Path, model: Any, **options: Any) -> Checkpointer:
    def save(directory: Path) -> None:
        model.save(directory / "model.zip")
        if getattr(model, "replay_buffer", None) is not None:
            model.save_replay_buffer(directory / "replay_buffer.pkl")

    return Checkpointer(run_dir, CallableState(save, lambda directory: None), **options)


def resume(run_dir: str | Path, algorithm: Any, env: Any, **load_options: Any) -> Any | None:
    """The model of the latest checkpoint (with its replay buffer and timestep count), or None."""
    for path in Checkpointer(run_dir, CallableState(lambda d: None, lambda d: None)).checkpoints():
        try:
            model = algorithm.load(path / "model.zip", env=env, **load_options)
            if (path / "replay_buffer.pkl").exists():
                model.load_replay_buffer(path / "replay_buffer.pkl")
            return model
        except Exception:  # noqa: BLE001 - a damaged checkpoint: try the one before
            continue
    return None


def learn(model: Any, total_timesteps: int, run_dir: str | Path, every_timesteps: int, keep_last: int = 3,
          deadline: str | None = None, exit_on_stop: bool = True, progress: str = "auto") -> Any:
    """model.learn() up to total_timesteps (counting what earlier runs did), checkpointed."""
    callbacks = require("stable_baselines3.common.callbacks", "rl")
    ckpt = _checkpointer(run_dir, model, keep_last=keep_last, deadline=deadline, exit_on_stop=exit_on_stop,
                         progress=progress)

    class CheckpointCallback(callbacks.BaseCallback):
        """Saves at rollout ends (where num_timesteps is a whole number of rollouts), stops at the next step."""

        stop_now = False

        def _on_step(self) -> bool:
            for info in self.locals.get("infos") or ():
                episode = info.get("episode") if isinstance(info, dict) else None
                if episode:  # set by the Monitor wrapper that SB3 puts around the env at an episode's end
                    ckpt.step = self.model.num_timesteps
                    ckpt.log(episode_reward=episode["r"], episode_length=episode["l"])
            if ckpt.progress.due():
                ckpt.step = self.model.num_timesteps
                ckpt.show_progress()
            return not self.stop_now

        def _on_rollout_end(self) -> None:
            ckpt.step = self.model.num_timesteps
            reason = ckpt.stop_reason()
            if reason:
                ckpt.save(reason=reason)
                ckpt.stopped = reason
                self.stop_now = True
            elif self.model.num_timesteps - (ckpt.saved_step or 0) >= every_timesteps:
                ckpt.save()

    ckpt.stop.install()
    ckpt.begin(model.num_timesteps, total_timesteps)
    try:
        remaining = total_timesteps - model.num_timesteps
        if remaining > 0:
            model.learn(remaining, reset_num_timesteps=False, callback=CheckpointCallback())
    finally:
        ckpt.stop.restore()
        ckpt.end()
    if ckpt.stopped:
        print(f"[durabatch] {ckpt.stopped}: checkpoint saved at {ckpt.step:,} timesteps; run again to resume")
        if exit_on_stop:
            raise SystemExit(EXIT_STOPPED)
        return model
    ckpt.step = model.num_timesteps
    ckpt.save(reason="final")
    return model
