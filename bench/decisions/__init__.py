"""Customer simulator: the personalisation service's learning against other policies.

`python -m bench.decisions` (and `make bench`): simulated people with hidden true odds
(`truth.py`) and negative experiences that come and go (`population.py`) go through the
service's own decision path in process, with the shipped catalogue, the contact ledger's
model and the shipped learning file (`simulate.py`), once per policy on the same people
and requests: a random eligible action, the static rules, plain VW without the experience
rules, this service (rules + VW) and an oracle. Prints the table, the goals of issue 11
met or not, `cx nba evaluate`'s estimate of the static rules from the service's own log
against their true expected reward, and the decision path's speed; saves the learning
curves as a PNG under bench/results/.
"""

from __future__ import annotations

from bench.decisions.run import run

__all__ = ["run"]
