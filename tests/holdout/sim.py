#!/usr/bin/env python3
"""Holdout day generator: a price-time-priority matching engine with market
participants, written independently of tapewatch's own generator and rules.

It owns: the order books and matching (continuous double auction, closing
call auction with one uncrossing price), the trading-day schedule, the
benign participants, the planted abusers, and the files of one day (tape in
FEED.md format, accounts, instruments, truth, roles).

Python 3.11 standard library only; the output is a pure function of the
command-line arguments (one random.Random seeded from --seed).

    python3 tests/holdout/sim.py --seed 11 --out tests/holdout/days/day1.csv
"""

import argparse
import bisect
import heapq
import math
import os
import random
from collections import deque
from datetime import date, datetime, timedelta, timezone

NS = 1_000_000_000
MS = 1_000_000
SHANGHAI = timezone(timedelta(hours=8))  # no DST in China since 1991
CALL_ROLES = ("trader", "marking-close")
LOTS = (100, 100, 200, 200, 300, 500, 500, 1000, 1000, 2000, 3000, 5000)


def fmt_px(c):
    """Price in ticks (0.01 CNY) -> FEED.md decimal with 4 places."""
    return f"{c // 100}.{c % 100:02d}00"


def lot(q):
    return max(100, int(q) // 100 * 100)


class Order:
    __slots__ = ("oid", "acct", "grp", "inst", "side", "px", "open", "arr", "done")

    def __init__(self, oid, acct, grp, inst, side, px, qty, arr):
        self.oid, self.acct, self.grp, self.inst = oid, acct, grp, inst
        self.side, self.px, self.open, self.arr = side, px, qty, arr
        self.done = False


class Book:
    """One instrument's limit order book: price levels of FIFO queues."""

    def __init__(self, inst, prev, lu, ld):
        self.inst, self.prev, self.lu, self.ld = inst, prev, lu, ld
        self.levels = {"B": {}, "S": {}}
        self.pxs = {"B": [], "S": []}  # ascending
        self.last = prev
        self.recent = deque()  # (ts, px) of the last seconds' trades

    def best(self, side):
        p = self.pxs[side]
        if not p:
            return None
        return p[-1] if side == "B" else p[0]

    def add(self, o):
        lv = self.levels[o.side]
        if o.px not in lv:
            lv[o.px] = deque()
            bisect.insort(self.pxs[o.side], o.px)
        lv[o.px].append(o)

    def remove(self, o):
        q = self.levels[o.side][o.px]
        q.remove(o)
        if not q:
            del self.levels[o.side][o.px]
            self.pxs[o.side].remove(o.px)

    def top(self, side, n=5):
        p = self.pxs[side]
        return p[-n:][::-1] if side == "B" else p[:n]

    def depth(self, side, n=5):
        lv = self.levels[side]
        return sum(o.open for p in self.top(side, n) for o in lv[p])

    def crossing_qty(self, side, limit):
        """Open quantity on the side opposite `side` that an order at `limit` reaches."""
        opp = "S" if side == "B" else "B"
        tot = 0
        for p in self.pxs[opp] if opp == "S" else reversed(self.pxs[opp]):
            if (side == "B" and p > limit) or (side == "S" and p < limit):
                break
            tot += sum(o.open for o in self.levels[opp][p])
        return tot

    def mid(self):
        b, a = self.best("B"), self.best("S")
        if b is not None and a is not None:
            return (a + b) / 2
        return float(self.last)


class Sim:
    def __init__(self, day, rng):
        self.rng = rng
        self.recs = []
        self.heap = []
        self.n = 0
        self.now = 0
        self.next_oid = rng.randrange(10_000, 90_000) * 100
        self.arr = 0
        self.books = {}
        self.group = {}
        self.role = {}
        self.no_stp = set()
        self.cool = {}
        t = lambda h, m, s=0: int(datetime(day.year, day.month, day.day, h, m, s, tzinfo=SHANGHAI).timestamp()) * NS
        self.t = t
        self.T0930, self.T1130, self.T1300 = t(9, 30), t(11, 30), t(13, 0)
        self.T1457, self.T1500 = t(14, 57), t(15, 0)
        self.last_cont = {}
        self.pos = {}
        self.traders = []

    # -- schedule -------------------------------------------------------
    def spawn(self, gen, at=None):
        self.n += 1
        heapq.heappush(self.heap, (self.now if at is None else at, self.n, gen))

    def run(self):
        while self.heap:
            t, _, g = heapq.heappop(self.heap)
            self.now = t
            try:
                d = next(g)
            except StopIteration:
                continue
            self.n += 1
            heapq.heappush(self.heap, (t + max(1, int(d)), self.n, g))

    def continuous(self, t=None):
        t = self.now if t is None else t
        return self.T0930 <= t < self.T1130 or self.T1300 <= t < self.T1457

    def wait_cont(self):
        """0 when continuous trading is on, the wait until it is, None after 14:57."""
        t = self.now
        if t < self.T0930:
            return self.T0930 - t
        if self.T1130 <= t < self.T1300:
            return self.T1300 - t
        if t >= self.T1457:
            return None
        return 0

    def in_call(self):
        return self.T1457 <= self.now < self.T1500

    # -- the engine -----------------------------------------------------
    def account(self, name, grp, role, wash=False):
        self.group[name] = grp
        self.role[name] = role
        if wash:
            self.no_stp.add(name)

    def submit(self, acct, inst, side, px, qty, ioc=False, react=True):
        b = self.books[inst]
        px = min(max(px, b.ld), b.lu)
        qty = lot(qty)
        if not (self.continuous() or (self.in_call() and self.role[acct] in CALL_ROLES)):
            # Rejected by the exchange (closed, or a role that stays out of the
            # call): nothing reaches the tape.
            dead = Order(0, acct, self.group[acct], inst, side, px, 0, 0)
            dead.done = True
            return dead
        self.next_oid += self.rng.randrange(1, 4)
        self.arr += 1
        o = Order(self.next_oid, acct, self.group[acct], inst, side, px, qty, self.arr)
        self.recs.append((self.now, "N", o.oid, acct, inst, side, px, qty, "", ""))
        if self.continuous():
            self.match(b, o)
        elif self._crosses_own(b, o):
            # Call orders are not matched until 15:00, so self-trade prevention
            # happens at entry: an order that would cross its group's own
            # resting order is rejected (nothing reaches the tape).
            o.open = 0
            o.done = True
            self.recs.pop()
            return o
        if o.open > 0:
            if ioc and self.continuous():
                self.recs.append((self.now, "C", o.oid, acct, inst, side, px, o.open, "", ""))
                o.open = 0
                o.done = True
            else:
                b.add(o)
                if react and self.continuous():
                    self.maybe_react(b, o)
        else:
            o.done = True
        return o

    def _crosses_own(self, b, o):
        opp = "S" if o.side == "B" else "B"
        for p, q in b.levels[opp].items():
            if (o.side == "B" and p <= o.px) or (o.side == "S" and p >= o.px):
                if any(r.grp == o.grp for r in q):
                    return True
        return False

    def cancel(self, o):
        # Shenzhen accepts no cancels in the closing call; lunch is closed too.
        if o.done or o.open <= 0 or not self.continuous():
            return False
        self.recs.append((self.now, "C", o.oid, o.acct, o.inst, o.side, o.px, o.open, "", ""))
        self.books[o.inst].remove(o)
        o.open = 0
        o.done = True
        return True

    def match(self, b, o):
        opp = "S" if o.side == "B" else "B"
        while o.open > 0:
            bp = b.best(opp)
            if bp is None or (o.side == "B" and bp > o.px) or (o.side == "S" and bp < o.px):
                return
            q = b.levels[opp][bp]
            r = q[0]
            if r.grp == o.grp and not (r.acct in self.no_stp and o.acct in self.no_stp):
                # Self-trade prevention (cancel resting) for everyone but the
                # planted wash traders, so benign actors never trade with themselves.
                self.cancel(r)
                continue
            x = min(r.open, o.open)
            buy, sell = (o, r) if o.side == "B" else (r, o)
            self.trade(b, buy, sell, bp, x, o.side, self.now)
            r.open -= x
            o.open -= x
            if r.open == 0:
                r.done = True
                q.popleft()
                if not q:
                    del b.levels[opp][bp]
                    b.pxs[opp].remove(bp)

    def trade(self, b, buy, sell, px, x, aggr, ts):
        self.recs.append((ts, "T", buy.oid, buy.acct, b.inst, aggr, px, x, sell.oid, sell.acct))
        self.pos[(buy.acct, b.inst)] = self.pos.get((buy.acct, b.inst), 0) + x
        self.pos[(sell.acct, b.inst)] = self.pos.get((sell.acct, b.inst), 0) - x
        b.last = px
        if self.continuous(ts):
            self.last_cont[b.inst] = px
            b.recent.append((ts, px))
            while b.recent and b.recent[0][0] < ts - 2 * NS:
                b.recent.popleft()
            lo = min(p for _, p in b.recent)
            hi = max(p for _, p in b.recent)
            for side, move in (("B", px - lo), ("S", hi - px)):
                key = ("chase", b.inst)
                if move >= 3 and self.cool.get(key, 0) <= ts:
                    self.cool[key] = ts + 8 * NS
                    self.spawn(self.chasers(b.inst, side))

    # -- the crowd ----------------------------------------------------------
    def maybe_react(self, b, o):
        """Traders lean toward the heavier side of the book, as real ones do."""
        if o.open < 1000:
            return
        same, opp = b.depth(o.side), b.depth("S" if o.side == "B" else "B")
        key = ("react", b.inst, o.side)
        if same >= 1.8 * max(opp, 1) and o.open >= 0.1 * same and self.cool.get(key, 0) <= self.now:
            self.cool[key] = self.now + 1500 * MS
            self.spawn(self.reactors(b.inst, o.side))

    def reactors(self, inst, side):
        rng, b = self.rng, self.books[inst]
        opp = "S" if side == "B" else "B"
        for _ in range(rng.randint(2, 5)):
            yield rng.randint(20, 250) * MS
            if not self.continuous():
                return
            if b.depth(side) < 1.5 * max(b.depth(opp), 1):
                return
            p = b.best(opp)
            if p is None:
                return
            step = rng.choice((0, 0, 0, 1))
            px = p + step if side == "B" else p - step
            lvl = sum(o.open for o in b.levels[opp].get(p, ()))
            q = max(rng.choice(LOTS[:9]), lot(lvl * rng.uniform(0.15, 0.5)))
            o = self.submit(rng.choice(self.traders), inst, side, px, q, react=False)
            if o.open > 0:
                self.spawn(self.cancel_later(o, rng.uniform(5, 90)))

    def chasers(self, inst, side):
        rng, b = self.rng, self.books[inst]
        opp = "S" if side == "B" else "B"
        for _ in range(rng.randint(3, 7)):
            yield int(rng.expovariate(1 / 1.2) * NS) + 30 * MS
            if not self.continuous():
                return
            p = b.best(opp)
            if p is None:
                p = b.last
            step = rng.randint(0, 2)
            px = p + step if side == "B" else p - step
            o = self.submit(rng.choice(self.traders), inst, side, px, rng.choice(LOTS[:9]), react=False)
            if o.open > 0 and rng.random() < 0.7:
                self.spawn(self.cancel_later(o, rng.uniform(10, 120)))

    def cancel_later(self, o, secs):
        yield int(secs * NS)
        self.cancel(o)

    # -- benign participants ------------------------------------------------
    def seed_book(self, inst):
        """The morning's resting book (the opening call is skipped): a few orders
        on each side of the previous close, none crossing."""
        rng, b = self.rng, self.books[inst]
        for side in "BS":
            for k in range(rng.randint(6, 10)):
                px = b.prev - 1 - k - rng.randint(0, 1) if side == "B" else b.prev + 1 + k + rng.randint(0, 1)
                self.submit(rng.choice(self.traders), inst, side, px, rng.choice(LOTS), react=False)
                yield rng.randint(1, 50) * MS

    def ordinary(self, inst, rate):
        """Poisson arrivals of retail-like orders, mostly passive near the touch."""
        rng, b = self.rng, self.books[inst]
        fair = b.prev * (1 + rng.uniform(-0.02, 0.02))
        while True:
            yield int(rng.expovariate(rate) * NS) + 1
            w = self.wait_cont()
            if w is None:
                return
            if w > 0:
                yield w
                continue
            db, da = b.depth("B"), b.depth("S")
            imb = (db - da) / max(db + da, 1)
            # Lean with the book's imbalance, lean back toward the day's
            # value (so prices wander, but not to the limits on their own).
            dev = (b.mid() - fair) / fair
            side = "B" if rng.random() < 0.5 + 0.3 * imb - 5 * dev else "S"
            opp = "S" if side == "B" else "B"
            qty = rng.choice(LOTS)
            thin = min(db, da) < 1000
            if thin:  # an empty side draws resting orders
                side, opp = ("B", "S") if db < da else ("S", "B")
            if not thin and rng.random() < 0.2 and b.best(opp) is not None:
                px = b.best(opp)
            else:
                ref = b.best(side)
                if ref is None:
                    m = b.mid()
                    ref = math.floor(m) - 1 if side == "B" else math.ceil(m) + 1
                k = min(int(rng.expovariate(0.6)), 8)
                px = ref - k if side == "B" else ref + k
                if b.best(opp) is not None and rng.random() < 0.15:
                    # improve inside a wide spread
                    bb, ba = b.best("B"), b.best("S")
                    if bb is not None and ba is not None and ba - bb >= 2:
                        px = bb + 1 if side == "B" else ba - 1
            o = self.submit(rng.choice(self.traders), inst, side, px, qty)
            if o.open > 0 and rng.random() < 0.55:
                self.spawn(self.cancel_later(o, min(600.0, rng.lognormvariate(math.log(30), 1.0))))

    def market_maker(self, acct, inst, sessions, size):
        """Two-sided quotes at or near the touch, replaced every 100-500 ms, skewed by inventory."""
        rng, b = self.rng, self.books[inst]
        quotes = {"B": None, "S": None}
        unit = size * 2
        for start, end in sessions:
            if self.now < start:
                yield start - self.now
            while self.now < end:
                w = self.wait_cont()
                if w is None:
                    return
                if w > 0:
                    break
                inv = self.pos.get((acct, inst), 0)
                skew = min(2, abs(int(inv / unit)))
                ob = self._touch_without_makers(b, "B")
                oa = self._touch_without_makers(b, "S")
                if ob is None and oa is None:
                    ob, oa = b.last - 1, b.last + 1
                elif ob is None:
                    ob = oa - 2
                elif oa is None:
                    oa = ob + 2
                # Quote off the touch of everyone but the makers: makers that
                # priced off each other's (skewed) quotes would walk the price
                # up or down on their own.
                if oa - ob > 4:  # a wide market: step in around its middle
                    m = (oa + ob) // 2
                    bid, ask = m - 1, m + 1
                else:
                    inside = 1 if oa - ob >= 3 and rng.random() < 0.5 else 0
                    bid, ask = ob + inside, oa - inside
                if inv > 0:
                    bid -= skew  # long: back off the bid, keep offering
                elif inv < 0:
                    ask += skew
                for o in quotes.values():
                    if o is not None:
                        self.cancel(o)
                ba, bb = b.best("S"), b.best("B")
                if ba is not None and bid >= ba:
                    bid = ba - 1  # makers rest; they never take
                if bb is not None and ask <= bb:
                    ask = bb + 1
                ask = max(ask, bid + 1)
                for side, px in (("B", bid), ("S", ask)):
                    old = quotes[side]
                    if old is not None and not old.done:
                        self.cancel(old)
                    quotes[side] = self.submit(acct, inst, side, px, size, react=False)
                yield rng.randint(100, 500) * MS
            for side in ("B", "S"):
                if quotes[side] is not None:
                    self.cancel(quotes[side])
                    quotes[side] = None

    def _touch_without_makers(self, b, side):
        for p in b.top(side, 10):
            if any(self.role[o.acct] != "market-maker" for o in b.levels[side][p]):
                return p
        return None

    def institution_worker(self, acct, inst, side, parent, start, secs):
        """A large parent order worked as child orders: passive joins and some takes."""
        rng, b = self.rng, self.books[inst]
        opp = "S" if side == "B" else "B"
        yield max(1, start - self.now)
        end = self.now + secs * NS
        done = 0
        while done < parent and self.now < end:
            w = self.wait_cont()
            if w is None:
                return
            if w > 0:
                yield w
                continue
            child = lot(rng.uniform(1000, 6000))
            if rng.random() < 0.35 and b.best(opp) is not None:
                before = self.pos.get((acct, inst), 0)
                self.submit(acct, inst, side, b.best(opp), min(child, b.crossing_qty(side, b.best(opp)) or child), ioc=True)
                done += abs(self.pos.get((acct, inst), 0) - before)
            else:
                ref = b.best(side) if b.best(side) is not None else round(b.mid())
                before = self.pos.get((acct, inst), 0)
                o = self.submit(acct, inst, side, ref, child)
                yield int(rng.uniform(15, 60) * NS)
                self.cancel(o)
                done += abs(self.pos.get((acct, inst), 0) - before)
            yield int(rng.uniform(5, 40) * NS)

    def institution_rester(self, acct, inst, times):
        """Large orders resting 1-5 ticks behind the touch for tens of seconds, then cancelled."""
        rng, b = self.rng, self.books[inst]
        for t in times:
            if self.now < t:
                yield t - self.now
            w = self.wait_cont()
            if w is None:
                return
            if w > 0:
                yield w
            side = rng.choice("BS")
            ref = b.best(side)
            if ref is None:
                continue
            k = rng.randint(1, 5)
            px = ref - k if side == "B" else ref + k
            o = self.submit(acct, inst, side, px, lot(max(5000, b.depth(side) * rng.uniform(0.5, 1.5))))
            yield int(rng.uniform(15, 70) * NS)
            self.cancel(o)

    def hft(self, acct, inst, sessions):
        """Small orders at the touch cancelled within milliseconds; some takes."""
        rng, b = self.rng, self.books[inst]
        for start, end in sessions:
            if self.now < start:
                yield start - self.now
            while self.now < end:
                if self.wait_cont() != 0:
                    break
                side = rng.choice("BS")
                opp = "S" if side == "B" else "B"
                if rng.random() < 0.1 and b.best(opp) is not None:
                    self.submit(acct, inst, side, b.best(opp), rng.choice((100, 200)), ioc=True)
                elif b.best(side) is not None:
                    o = self.submit(acct, inst, side, b.best(side), rng.choice((100, 200, 300)), react=False)
                    yield rng.randint(10, 120) * MS
                    self.cancel(o)
                yield rng.randint(30, 300) * MS

    # -- planted abusers ----------------------------------------------------
    def wait_book(self, b, tries=120):
        """Wait (up to two minutes) for continuous trading and a two-sided book."""
        for _ in range(tries):
            if self.wait_cont() is None:
                return False
            if self.wait_cont() == 0 and b.best("B") is not None and b.best("S") is not None:
                return True
            yield NS
        return False

    def spoofer(self, small_acct, big_acct, inst, times):
        """Coscia: small genuine order at the touch, large opposite orders at the touch
        and 1-2 ticks behind, cancelled within ~0.3-1 s once the crowd has reacted."""
        rng, b = self.rng, self.books[inst]
        for t in times:
            if self.now < t:
                yield t - self.now
            if not (yield from self.wait_book(b)):
                continue
            bb, ba = b.best("B"), b.best("S")
            gen = rng.choice("BS")  # genuine side; the spoof goes on the other
            spoof = "S" if gen == "B" else "B"
            if gen == "S":
                px = ba - 1 if ba - bb >= 2 else ba
            else:
                px = bb + 1 if ba - bb >= 2 else bb
            small = self.submit(small_acct, inst, gen, px, rng.choice((100, 200, 300, 500)), react=False)
            yield rng.randint(5, 60) * MS
            touch = b.best(spoof)
            if touch is None:
                continue
            total = lot(max(4000, b.depth(spoof) * rng.uniform(1.3, 2.5)))
            n = rng.randint(2, 3)
            bigs = []
            for i in range(n):
                off = i if i < 2 else 2
                bpx = touch - off if spoof == "B" else touch + off
                bigs.append(self.submit(big_acct, inst, spoof, bpx, total // n))
                yield rng.randint(1, 15) * MS
            yield rng.randint(300, 950) * MS
            for o in bigs:
                self.cancel(o)
            yield rng.randint(50, 400) * MS
            self.cancel(small)

    def layerer(self, acct, inst, times):
        """Sarao: 4-6 large layers one tick apart behind the touch on one side,
        held 1-5 s and cancelled, while a genuine order on the other side fills."""
        rng, b = self.rng, self.books[inst]
        for t in times:
            if self.now < t:
                yield t - self.now
            if not (yield from self.wait_book(b)):
                continue
            bb, ba = b.best("B"), b.best("S")
            layer = rng.choice("BS")
            gen = "S" if layer == "B" else "B"
            if gen == "B":
                gpx = bb + 1 if ba - bb >= 2 else bb
            else:
                gpx = ba - 1 if ba - bb >= 2 else ba
            genuine = self.submit(acct, inst, gen, gpx, rng.choice((300, 500, 800, 1000)), react=False)
            yield rng.randint(5, 40) * MS
            touch = b.best(layer)
            if touch is None:
                continue
            n = rng.randint(4, 6)
            each = lot(max(3000, b.depth(layer) * rng.uniform(0.4, 0.8)))
            layers = []
            for k in range(1, n + 1):
                lpx = touch - k if layer == "B" else touch + k
                layers.append(self.submit(acct, inst, layer, lpx, each))
                yield rng.randint(1, 10) * MS
            hold = int(rng.uniform(1.0, 5.0) * NS)
            yield hold // 2
            far = b.best(layer)  # the crowd has leaned away: take the other side
            if far is not None and rng.random() < 0.7:
                self.submit(acct, inst, gen, far, rng.choice((200, 300, 500)), ioc=True, react=False)
            yield hold - hold // 2
            for o in layers:
                self.cancel(o)
            yield rng.randint(200, 1000) * MS
            self.cancel(genuine)

    def igniter(self, buy_acct, sell_acct, inst, times):
        """Momentum ignition: a 1-2 s burst of aggressive orders walks the price 6-10
        ticks; the crowd chases; the group trades out at the moved price within 30 s."""
        rng, b = self.rng, self.books[inst]
        for t in times:
            if self.now < t:
                yield t - self.now
            if self.wait_cont() != 0:
                continue
            side = rng.choice("BS")
            opp = "S" if side == "B" else "B"
            target = rng.randint(6, 10)
            for _ in range(300):  # wait for offers to walk through
                p0 = b.best(opp)
                if self.wait_cont() == 0 and p0 is not None and b.best(side) is not None:
                    near = [p for p in b.top(opp, 10) if abs(p - p0) <= target]
                    if len(near) >= 3:
                        break
                yield NS
            else:
                continue
            if self.wait_cont() != 0:
                continue
            dur = rng.uniform(1.0, 1.6) * NS
            start = self.now
            got = 0
            burst = []
            sign = 1 if side == "B" else -1
            p0 = max(p0, b.last) if side == "B" else min(p0, b.last)  # walk past the touch and the last print
            while self.now < start + dur and self.wait_cont() == 0:
                cap = p0 + sign * (target + 2)
                reach = [p for p in b.top(opp, 10) if sign * (p - cap) <= 0]
                if not reach:  # walked through the offers: wait for the next ones
                    yield rng.randint(100, 200) * MS
                    continue
                lim = reach[min(len(reach), rng.randint(1, 3)) - 1]  # take one to three levels
                q = b.crossing_qty(side, lim) + rng.choice((100, 200, 300))
                before = self.pos.get((buy_acct, inst), 0)
                burst.append(self.submit(buy_acct, inst, side, lim, q))
                got += abs(self.pos.get((buy_acct, inst), 0) - before)
                if sign * (b.last - p0) >= target:
                    break
                yield rng.randint(120, 300) * MS
            # The last burst order's remainder stays as the new best bid (it
            # holds the moved price; self-trade prevention cancels it once the
            # group trades out through it).
            for o in burst[:-1]:
                self.cancel(o)
            # Trade out within 30 s of the start, never nearer the start than
            # 3 ticks; left-overs are cancelled.
            yield rng.randint(50, 400) * MS
            left = got
            outs = []
            for _ in range(rng.randint(2, 4)):
                if left < 100 or self.wait_cont() != 0:
                    break
                # Hit the bids that are still at least 3 ticks up (chasers',
                # makers'), the rest resting there for the chasers to come.
                px = p0 + 3 * sign
                q = lot(max(100, min(left, max(got * rng.uniform(0.25, 0.5), b.crossing_qty(opp, px)))))
                outs.append(self.submit(sell_acct, inst, opp, px, q, react=False))
                left -= q
                yield int(rng.uniform(1, 5) * NS)
            yield max(1, start + rng.randint(18, 24) * NS - self.now)
            for o in outs + burst[-1:]:
                self.cancel(o)
            near = b.best(side)  # what is left goes into the chasers' bids, if still up
            if left >= 100 and near is not None and sign * (near - p0) >= 3 and self.wait_cont() == 0:
                self.submit(sell_acct, inst, opp, near, min(left, b.crossing_qty(opp, near)), ioc=True, react=False)

    def rampers(self, accts, inst, start, secs, lift):
        """A group lifting the price 5-10% within three minutes, taking most of the buying."""
        rng, b = self.rng, self.books[inst]
        yield max(1, start - self.now)
        while self.wait_cont() != 0:
            w = self.wait_cont()
            if w is None:
                return
            yield w
        t0 = self.now
        p0 = b.last
        tgt = min(round(p0 * (1 + lift)), b.lu - 2)
        resting = []
        i = 0
        while self.now < t0 + 175 * NS and self.wait_cont() == 0 and b.last < tgt:
            frac = min(1.0, (self.now - t0) / (secs * NS) + 0.03)
            lim = math.ceil(p0 + (tgt - p0) * frac)
            ask = b.best("S")
            if ask is not None and ask <= min(round(p0 * 1.095), lim + max(4, p0 // 50)):
                lim = max(lim, ask)  # lift the offer (up to 2% ahead of the path): the ramp takes liquidity
            q = b.crossing_qty("B", lim) + rng.choice((200, 300, 500, 1000))
            resting.append(self.submit(accts[i % len(accts)], inst, "B", lim, q))
            i += 1
            yield int(rng.uniform(1.2, 3.5) * NS)
        for o in resting:
            self.cancel(o)

    def marker(self, accts, inst, lift):
        """Marking the close: large buys in the closing call lift the uncrossing price."""
        rng, b = self.rng, self.books[inst]
        yield self.T1457 + rng.randint(20, 90) * NS - self.now
        last = self.last_cont.get(inst, b.last)
        tgt = min(round(last * (1 + lift)), b.lu)
        placed = 0
        for k, t in enumerate((0, rng.randint(40, 60), None)):
            if t is None:
                yield self.T1500 - 4 * NS - self.now
                need = lot(b.crossing_qty("B", tgt) * 1.1) - placed
            else:
                yield max(1, t * NS)
                need = lot(b.crossing_qty("B", tgt) * 0.5)
            if need >= 100:
                self.submit(accts[k % len(accts)], inst, "B", tgt, need, react=False)
                placed += lot(need)

    def wash(self, a, c, inst, times):
        """Two accounts of one group trading with each other: inside the spread
        when there is room, else through a thin offer the seller joined."""
        rng, b = self.rng, self.books[inst]
        for t in times:
            if self.now < t:
                yield t - self.now
            tries = 0
            while tries < 200:
                w = self.wait_cont()
                if w is None:
                    return
                if w > 0:
                    yield w
                    continue
                bb, ba = b.best("B"), b.best("S")
                if bb is not None and ba is not None and ba - bb >= 2:
                    break
                if tries >= 20 and ba is not None and sum(o.open for o in b.levels["S"][ba]) <= 1000:
                    break  # a tight market: join a thin offer and buy through it
                tries += 1
                yield int(rng.uniform(0.5, 3.0) * NS)
            else:
                continue
            px = rng.randint(bb + 1, ba - 1) if bb is not None and ba - bb >= 2 else ba
            ahead = sum(o.open for o in b.levels["S"].get(px, ()))
            seller, buyer = (a, c) if rng.random() < 0.5 else (c, a)
            q = lot(rng.uniform(8000, 25000))
            s = self.submit(seller, inst, "S", px, q, react=False)
            yield rng.randint(3, 40) * MS
            ahead = min(ahead, sum(o.open for o in b.levels["S"].get(px, ()) if o is not s))
            o = self.submit(buyer, inst, "B", px, ahead + min(q, max(100, s.open)), react=False)
            yield rng.randint(50, 300) * MS
            self.cancel(s)
            self.cancel(o)

    def stuffer(self, acct, inst, times):
        """Quote stuffing: >= 300 orders and cancels within one second, repeatedly."""
        rng, b = self.rng, self.books[inst]
        for t in times:
            if self.now < t:
                yield t - self.now
            if self.wait_cont() != 0:
                continue
            n = rng.randint(155, 190)
            gap = int(0.85 * NS / n)
            for _ in range(n):
                side = rng.choice("BS")
                ref = b.best(side)
                if ref is None:
                    ref = round(b.mid())
                k = rng.randint(5, 15)
                o = self.submit(acct, inst, side, ref - k if side == "B" else ref + k, rng.choice((100, 200, 300)), react=False)
                yield rng.randint(1, 4) * MS
                self.cancel(o)
                yield max(1, gap - 3 * MS)

    # -- the closing call ---------------------------------------------------
    def call_traders(self, inst):
        rng, b = self.rng, self.books[inst]
        last = self.last_cont.get(inst, b.last)
        for _ in range(rng.randint(4, 10)):
            yield rng.randint(1, 30) * NS
            if self.now >= self.T1500 - 10 * NS:
                return
            side = rng.choice("BS")
            if side == "B":
                px = round(last * (1 + rng.uniform(-0.012, 0.006)))
            else:
                px = round(last * (1 + (rng.uniform(0.0, 0.065) if rng.random() < 0.5 else rng.uniform(-0.006, 0.01))))
            self.submit(rng.choice(self.traders), inst, side, px, rng.choice(LOTS), react=False)

    def uncross(self):
        """One price per instrument: most volume, then least surplus, then the side
        of the surplus (market pressure), then nearest the last continuous price."""
        yield self.T1500 - self.now
        for inst, b in self.books.items():
            bids = sorted((o for q in b.levels["B"].values() for o in q), key=lambda o: (-o.px, o.arr))
            asks = sorted((o for q in b.levels["S"].values() for o in q), key=lambda o: (o.px, o.arr))
            if not bids or not asks or bids[0].px < asks[0].px:
                continue
            best = None
            for p in sorted({o.px for o in bids} | {o.px for o in asks}):
                d = sum(o.open for o in bids if o.px >= p)
                s = sum(o.open for o in asks if o.px <= p)
                v = min(d, s)
                if v == 0:
                    continue
                surplus = d - s
                ref = self.last_cont.get(inst, b.last)
                pressure = -p if surplus > 0 else (p if surplus < 0 else abs(p - ref))
                key = (-v, abs(surplus), pressure, p)
                if best is None or key < best[0]:
                    best = (key, p)
            if best is None:
                continue
            p = best[1]
            bi = [o for o in bids if o.px >= p]
            ai = [o for o in asks if o.px <= p]
            i = j = 0
            while i < len(bi) and j < len(ai):
                o, r = bi[i], ai[j]
                x = min(o.open, r.open)
                aggr = "B" if o.arr > r.arr else "S"
                self.trade(b, o, r, p, x, aggr, self.T1500)
                o.open -= x
                r.open -= x
                if o.open == 0:
                    o.done = True
                    i += 1
                if r.open == 0:
                    r.done = True
                    j += 1


def make_day(args):
    rng = random.Random(args.seed)
    day = date.fromisoformat(args.date)
    sim = Sim(day, rng)
    # -- instruments ---------------------------------------------------------
    codes = set()
    insts = []
    n_chinext = max(2, args.instruments // 4)
    while len(insts) < args.instruments:
        chinext = len(insts) < n_chinext
        code = f"{rng.randint(300001, 300999)}" if chinext else f"{rng.choice((0, 2))}{rng.randint(1, 99999):05d}"
        if code in codes:
            continue
        codes.add(code)
        prev = rng.randint(300, 6000)
        pct = 20 if chinext else 10
        lu = (prev * (100 + pct) + 50) // 100
        ld = (prev * (100 - pct) + 50) // 100
        insts.append(code)
        sim.books[code] = Book(code, prev, lu, ld)
    rng.shuffle(insts)
    # -- accounts: opaque names, roles kept in roles.csv for the self-check ---
    ids = rng.sample(range(10000, 99999), 2000)
    gids = rng.sample(range(1000, 9999), 2000)
    nid = iter(ids)
    ngid = iter(gids)

    def new_acct(role, grp=None, wash=False):
        a = f"A{next(nid)}"
        sim.account(a, grp or f"G{next(ngid)}", role, wash)
        return a

    sim.traders = [new_acct("trader") for _ in range(args.traders)]
    open_s = [(sim.T0930, sim.T1130), (sim.T1300, sim.T1457 - 60 * NS)]
    span = lambda: rng.choice(open_s)

    def rand_time(margin=120):
        a, z = span()
        return rng.randint(a // NS + margin, z // NS - margin) * NS

    truth = []
    episodes = {i: [] for i in insts}
    pool = list(insts)
    busy = set()

    def pick(exclusive=False):
        # The ramp, close and wash stages are kept free of other abusers.
        i = rng.choice([i for i in pool if i not in busy])
        if exclusive:
            busy.add(i)
        return i

    def times(k, lo=20, hi=90):
        out = []
        t = rand_time(300)
        while len(out) < k:
            if not sim.continuous(t):
                t = sim.T1300 if t < sim.T1300 else rand_time(300)
                continue
            out.append(t)
            t += rng.randint(lo, hi) * NS
        return sorted(out)

    # Exclusive instruments first (ramping, marking, wash need a quiet stage).
    for k in range(args.ramp):
        g = f"G{next(ngid)}"
        accts = [new_acct("ramping", g) for _ in range(2)]
        inst = pick(True)
        start = rand_time(400)
        episodes[inst].append((start, 180, True))
        sim.spawn(sim.rampers(accts, inst, start, rng.randint(120, 165), rng.uniform(0.065, 0.085)))
        truth += [(a, "ramping", inst) for a in accts]
    for k in range(args.mark):
        g = f"G{next(ngid)}"
        accts = [new_acct("marking-close", g) for _ in range(rng.choice((1, 2)))]
        inst = pick(True)
        sim.spawn(sim.marker(accts, inst, rng.uniform(0.048, 0.058)))
        truth += [(a, "marking-close", inst) for a in accts]
    for k in range(args.wash):
        g = f"G{next(ngid)}"
        a, c = new_acct("wash-trade", g, True), new_acct("wash-trade", g, True)
        inst = pick(True)
        sim.spawn(sim.wash(a, c, inst, sorted(rand_time(200) for _ in range(rng.randint(6, 9)))))
        truth += [(a, "wash-trade", inst), (c, "wash-trade", inst)]
    for k in range(args.spoof):
        pair = k % 2 == 1
        g = f"G{next(ngid)}"
        small = new_acct("spoofing", g)
        big = new_acct("spoofing", g) if pair else small
        for inst in sorted({pick() for _ in range(rng.choice((1, 2)))}):
            ts = times(rng.randint(8, 14), 30, 240)
            sim.spawn(sim.spoofer(small, big, inst, ts))
            episodes[inst] += [(t, 5, False) for t in ts[:2]]
            truth.append((small, "spoofing", inst))
            if pair:
                truth.append((big, "spoofing", inst))
    for k in range(args.layer):
        a = new_acct("layering")
        inst = pick()
        ts = times(rng.randint(6, 10), 30, 240)
        sim.spawn(sim.layerer(a, inst, ts))
        episodes[inst] += [(t, 8, False) for t in ts[:1]]
        truth.append((a, "layering", inst))
    for k in range(args.momentum):
        g = f"G{next(ngid)}"
        a = new_acct("momentum-ignition", g)
        c = new_acct("momentum-ignition", g) if k % 2 == 1 else a
        inst = pick()
        ts = times(5, 400, 1200)
        sim.spawn(sim.igniter(a, c, inst, ts))
        episodes[inst] += [(t, 35, True) for t in ts]
        truth.append((a, "momentum-ignition", inst))
        if c != a:
            truth.append((c, "momentum-ignition", inst))
    for k in range(args.stuff):
        a = new_acct("quote-stuffing")
        inst = pick()
        sim.spawn(sim.stuffer(a, inst, times(rng.randint(3, 4), 120, 900)))
        truth.append((a, "quote-stuffing", inst))

    # -- benign participants ----------------------------------------------------
    for inst in insts:
        sim.spawn(sim.seed_book(inst), at=sim.T0930)
        sim.spawn(sim.ordinary(inst, args.order_rate * rng.uniform(0.6, 1.5)), at=sim.T0930 + rng.randint(1, 5000) * MS)
        sim.spawn(sim.call_traders(inst), at=sim.T1457)
    mm_accts = [new_acct("market-maker") for _ in range(max(3, args.instruments // 3))]
    for inst in insts:
        if rng.random() < 0.15:
            continue  # a few instruments without market makers
        for k, a in enumerate(rng.sample(mm_accts, 2)):
            # Quoting at 100-500 ms costs ~13 records a second, so each maker
            # quotes in sessions: around some of the instrument's episodes
            # (the stage the abusers need) and a few at random.
            sess = [(t - rng.randint(10, 25) * NS, t + (d + rng.randint(5, 15)) * NS) for t, d, always in episodes[inst] if (always and k == 0) or rng.random() < 0.35]
            for _ in range(args.mm_sessions if k == 0 else rng.randint(0, 1)):
                s = rand_time(100)
                sess.append((s, s + rng.randint(20, 45) * NS))
            sess = merge(sorted(sess))
            sim.spawn(sim.market_maker(a, inst, sess, rng.choice((500, 1000, 1000, 2000, 3000))), at=sim.T0930)
    for k in range(args.institutions):
        a = new_acct("institution")
        inst = rng.choice(insts)
        if k % 3 == 2:
            sim.spawn(sim.institution_rester(a, inst, sorted(rand_time() for _ in range(rng.randint(4, 8)))))
        else:
            sim.spawn(sim.institution_worker(a, inst, rng.choice("BS"), lot(rng.uniform(30000, 200000)), rand_time(), rng.randint(900, 3600)))
    for k in range(args.hfts):
        a = new_acct("hft")
        for inst in rng.sample(insts, 2):
            s = sorted(rand_time() for _ in range(2))
            sim.spawn(sim.hft(a, inst, merge([(t, t + rng.randint(15, 40) * NS) for t in s])))
    sim.spawn(sim.uncross(), at=sim.T1457)
    sim.run()
    write(args.out, sim, insts, truth)
    return sim


def merge(spans):
    out = []
    for s, e in spans:
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def write(out, sim, insts, truth):
    stem = out[:-4] if out.endswith(".csv") else out
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(stem + ".csv", "w", newline="\n") as f:
        f.write("seq,ts_ns,kind,order_id,account,instrument,side,price,qty,contra_order_id,contra_account\n")
        for seq, (ts, k, oid, acct, inst, side, px, q, coid, cacct) in enumerate(sim.recs, 1):
            f.write(f"{seq},{ts},{k},{oid},{acct},{inst},{side},{fmt_px(px)},{q},{coid},{cacct}\n")
    with open(stem + ".accounts.csv", "w") as f:
        f.write("account,group\n")
        for a in sorted(sim.group):
            f.write(f"{a},{sim.group[a]}\n")
    with open(stem + ".instruments.csv", "w") as f:
        f.write("instrument,prev_close,limit_up,limit_down,tick\n")
        for i in sorted(insts):
            b = sim.books[i]
            f.write(f"{i},{fmt_px(b.prev)},{fmt_px(b.lu)},{fmt_px(b.ld)},0.0100\n")
    with open(stem + ".truth.csv", "w") as f:
        f.write("account,pattern,instrument\n")
        for a, p, i in sorted(set(truth)):
            f.write(f"{a},{p},{i}\n")
    with open(stem + ".roles.csv", "w") as f:
        f.write("account,role\n")
        for a in sorted(sim.role):
            f.write(f"{a},{sim.role[a]}\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--out", required=True, help="tape path, e.g. days/day1.csv")
    ap.add_argument("--date", default="2026-11-02", help="trading day (Asia/Shanghai)")
    ap.add_argument("--instruments", type=int, default=24)
    ap.add_argument("--traders", type=int, default=400)
    ap.add_argument("--order-rate", type=float, default=0.03, help="ordinary orders/s per instrument")
    ap.add_argument("--mm-sessions", type=int, default=1, help="extra quoting sessions per maker and instrument")
    ap.add_argument("--institutions", type=int, default=9)
    ap.add_argument("--hfts", type=int, default=3)
    ap.add_argument("--spoof", type=int, default=4)
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--momentum", type=int, default=3)
    ap.add_argument("--ramp", type=int, default=2)
    ap.add_argument("--mark", type=int, default=2)
    ap.add_argument("--wash", type=int, default=2)
    ap.add_argument("--stuff", type=int, default=2)
    args = ap.parse_args()
    sim = make_day(args)
    print(f"{args.out}: {len(sim.recs)} records")


if __name__ == "__main__":
    main()
