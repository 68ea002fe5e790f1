"""PPO on CartPole (gymnasium + stable-baselines3, CPU), checkpointed by durabatch: kill it or SIGTERM it at any
moment and run the same command again; it continues to exactly the same total timesteps.

    python -m examples.rl_train --timesteps 20480 --run-dir runs/rl_train [--deadline 11h30m]

A progress line shows timesteps/s, the ETA and the time left to the deadline; each episode's reward and length
are logged by timestep (durabatch.loops.sb3.learn calls ckpt.log), so from another terminal

    durabatch status runs/rl_train        # the timestep and the last episode's reward
    durabatch report runs/rl_train        # runs/rl_train/report.html: episode reward by timestep, and more
    durabatch dashboard runs/rl_train     # the same, live, on http://127.0.0.1:8765/
"""

from __future__ import annotations

import argparse
import logging

import durabatch
from durabatch.loops.sb3 import learn, resume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timesteps", type=int, default=20_480)
    parser.add_argument("--every", type=int, default=2_048, help="checkpoint every N timesteps")
    parser.add_argument("--run-dir", default="runs/rl_train")
    parser.add_argument("--deadline", default=None, help="e.g. 11h30m (a Kaggle or Colab quota is a deadline)")
    args = parser.parse_args()
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.evaluation import evaluate_policy

    durabatch.guard_logs()  # per-step debug logging cannot drown this run
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)
    env = gym.make("CartPole-v1")
    model = resume(args.run_dir, PPO, env)
    if model is None:
        model = PPO("MlpPolicy", env, n_steps=512, batch_size=64, seed=0, verbose=0)
    else:
        print(f"resumed at {model.num_timesteps:,} timesteps")
    model = learn(model, args.timesteps, args.run_dir, every_timesteps=args.every, deadline=args.deadline)
    mean, std = evaluate_policy(model, gym.make("CartPole-v1"), n_eval_episodes=10, deterministic=True)
    print(f"timesteps: {model.num_timesteps:,}  evaluation reward: {mean:.1f} +/- {std:.1f}")
    print(f"episode rewards by timestep: durabatch report {args.run_dir}")


if __name__ == "__main__":
    main()
