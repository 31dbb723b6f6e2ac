"""`python -m gymverl.cli`: the same app as the `gymverl` console script."""

from gymverl.cli import app

app()
