"""gymverl: turn NeMo Gym environments and rollouts into VeRL training data and training runs."""

__version__ = "0.1.0"
