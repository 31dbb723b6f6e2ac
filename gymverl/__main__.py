"""`python -m gymverl`: the same app as the `gymverl` console script (and `python -m gymverl.cli`)."""

from gymverl.cli import app

app()
