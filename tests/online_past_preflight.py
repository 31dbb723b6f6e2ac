"""Fault injection for tests: run the gymverl CLI with train-online's machine checks turned off.

`gymverl.online.check_runtime` refuses a machine without the rollout engine, TransferQueue or a
CUDA GPU (this CPU test machine has none of them). With it replaced by a no-op, train-online goes
past its preflight and starts its real NeMo Gym servers and the real `verl.trainer.main_ppo`, whose
real failure on this machine is what the tests check is reported (and cleaned up) properly. Nothing
else is changed. Usage: python tests/online_past_preflight.py train-online ARGS...
"""

import sys

import gymverl.online

gymverl.online.check_runtime = lambda opts: None  # the fault injection: skip the machine checks

from gymverl.cli import app  # noqa: E402

if __name__ == "__main__":
    sys.exit(app(sys.argv[1:], prog_name="gymverl"))
