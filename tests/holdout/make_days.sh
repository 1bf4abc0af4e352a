#!/bin/sh
# Regenerates the three committed holdout days (deterministic: same bytes every run).
set -e
here=$(dirname "$0")
python3 "$here/sim.py" --seed 11 --date 2026-11-02 --out "$here/days/day1.csv" --instruments 20
python3 "$here/sim.py" --seed 22 --date 2026-11-03 --out "$here/days/day2.csv" --instruments 28 \
    --spoof 3 --layer 2 --momentum 2 --ramp 3 --mark 3 --wash 3 --stuff 3 --traders 500 --order-rate 0.025
python3 "$here/sim.py" --seed 33 --date 2026-11-04 --out "$here/days/day3.csv" --instruments 24 \
    --spoof 5 --layer 3 --momentum 2 --ramp 2 --mark 2 --wash 2 --stuff 2 --institutions 12 --hfts 4
python3 "$here/check_sim.py"
