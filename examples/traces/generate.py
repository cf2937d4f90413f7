#!/usr/bin/env python3
"""Writes the sample job traces of `bbfleet simulate` (examples/traces/*.csv).

Seeded and deterministic: the same seed writes the same bytes. Standard library only.

    python3 examples/traces/generate.py            # both traces, seed 19
    python3 examples/traces/generate.py --seed 7 --out /tmp

office.csv   30 days from Monday 2026-03-02 of a busy team's weekday office pattern in
             Europe/Warsaw: pushes arrive as a Poisson process whose rate follows the
             working day (a morning ramp, a lunch dip, an afternoon peak, a quiet
             evening), each push a pipeline of 1 to 4 parallel steps of log-normal length
             (median 90 s); weekends and nights are nearly idle. About 50,000 steps:
             the simulator's speed benchmark.
release.csv  30 days of a smaller team whose load is bursts: a trickle of pushes in
             office hours, two to four release pipelines a weekday at random times that
             fan out 20 to 40 parallel test shards of 8 to 15 minutes, and a nightly
             build of 30 steps at 02:00.

Rows: submitted_at (UTC, ISO-8601), duration_s, labels (empty: any runner of the
fleet), repository.
"""

import argparse
import datetime as dt
import math
import os
import random
from zoneinfo import ZoneInfo

TZ = ZoneInfo("Europe/Warsaw")
START = dt.datetime(2026, 3, 2, tzinfo=TZ)  # a Monday
DAYS = 30
REPOSITORIES = ["api", "web", "mobile", "infra", "docs"]

# Office pushes per hour on a weekday, by local hour (0-23).
OFFICE_RATE = [
    1, 0.5, 0.5, 0.5, 0.5, 1, 3, 15,
    60, 95, 110, 105, 70, 85, 110, 115,
    100, 70, 35, 15, 8, 5, 3, 2,
]
WEEKEND_RATE = 2.0
# Scales the office rates to about 50,000 steps in 30 days.
OFFICE_SCALE = 1.04


def lognormal_seconds(rng, median, p90, low, high):
    sigma = (math.log(p90) - math.log(median)) / 1.2815515655446004
    return min(high, max(low, round(rng.lognormvariate(math.log(median), sigma))))


def row(at, duration, repository):
    utc = at.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{utc},{duration},,{repository}\n"


def poisson_times(rng, day, rate_of_hour):
    """Arrival times on `day`, hour by hour, at `rate_of_hour(h)` pushes an hour."""
    for hour in range(24):
        rate = rate_of_hour(hour)
        t = 0.0
        while rate > 0:
            t += rng.expovariate(rate / 3600.0)
            if t >= 3600:
                break
            yield day + dt.timedelta(hours=hour, seconds=t)


def local_day(i):
    # Local midnight of day i (DST-safe: built from the date, not by adding 24 h).
    d = START.date() + dt.timedelta(days=i)
    return dt.datetime(d.year, d.month, d.day, tzinfo=TZ)


def office(rng):
    rows = []
    for i in range(DAYS):
        day = local_day(i)
        weekday = day.weekday() < 5
        rate = (lambda h: OFFICE_RATE[h] * OFFICE_SCALE) if weekday else (lambda h: WEEKEND_RATE / 24 * 3)
        for at in poisson_times(rng, day, rate):
            repository = rng.choice(REPOSITORIES)
            for _ in range(rng.choice([1, 1, 2, 2, 3, 4])):
                rows.append((at, lognormal_seconds(rng, 90, 300, 15, 3600), repository))
    return rows


def release(rng):
    rows = []
    for i in range(DAYS):
        day = local_day(i)
        weekday = day.weekday() < 5
        trickle = (lambda h: 6 if 8 <= h < 18 else 0.3) if weekday else (lambda h: 0.2)
        for at in poisson_times(rng, day, trickle):
            rows.append((at, lognormal_seconds(rng, 300, 900, 30, 3600), rng.choice(REPOSITORIES)))
        bursts = rng.randint(2, 4) if weekday else 0
        for _ in range(bursts):
            at = day + dt.timedelta(seconds=rng.uniform(9 * 3600, 17 * 3600))
            repository = rng.choice(REPOSITORIES[:3])
            for _ in range(rng.randint(20, 40)):
                rows.append((at, rng.randint(480, 900), repository))
        nightly = day + dt.timedelta(hours=2)
        for _ in range(30):
            rows.append((nightly, rng.randint(300, 1200), "api"))
    return rows


def write(path, rows):
    rows.sort(key=lambda r: r[0])
    with open(path, "w", encoding="ascii", newline="") as f:
        f.write("submitted_at,duration_s,labels,repository\n")
        for at, duration, repository in rows:
            f.write(row(at, duration, repository))
    print(f"{path}: {len(rows)} steps")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=19)
    p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    a = p.parse_args()
    write(os.path.join(a.out, "office.csv"), office(random.Random(a.seed)))
    write(os.path.join(a.out, "release.csv"), release(random.Random(a.seed + 1)))


if __name__ == "__main__":
    main()
