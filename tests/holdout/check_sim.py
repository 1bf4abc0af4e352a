#!/usr/bin/env python3
"""Self-check of the holdout days: validates each tape against FEED.md and the
engine's own promises, then measures, from the tape alone, what each
participant type and each planted actor did.

It owns no generation logic: it reads `<stem>.csv` and the files beside it
(`.instruments.csv`, `.accounts.csv`, `.truth.csv`, `.roles.csv`) and
re-derives everything (the book, the touch, best-5 depth) from the records.

    python3 tests/holdout/check_sim.py                       # every day in days/
    python3 tests/holdout/check_sim.py tests/holdout/days/day1.csv

Exit status 1 when a tape breaks a rule or a planted actor's measured shape
misses what tests/holdout/README.md promises; every problem is listed.
"""

import csv
import glob
import os
import re
import statistics
import sys
from collections import defaultdict
from datetime import datetime, timedelta, timezone

HEADER = "seq,ts_ns,kind,order_id,account,instrument,side,price,qty,contra_order_id,contra_account"
ACCT = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
INST = re.compile(r"^[A-Za-z0-9._-]{1,12}$")
PRICE = re.compile(r"^[0-9]+(\.[0-9]{1,4})?$")
NS = 1_000_000_000
MS = 1_000_000
SHANGHAI = timezone(timedelta(hours=8))


def px4(s):
    """Decimal string -> integer 1/10,000."""
    whole, _, frac = s.partition(".")
    return int(whole) * 10000 + int((frac + "0000")[:4])


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class Order:
    __slots__ = ("oid", "seq", "ts", "acct", "inst", "side", "px", "qty", "open", "filled", "cancel_ts")

    def __init__(self, oid, seq, ts, acct, inst, side, px, qty):
        self.oid, self.seq, self.ts, self.acct, self.inst = oid, seq, ts, acct, inst
        self.side, self.px, self.qty, self.open = side, px, qty, qty
        self.filled = 0
        self.cancel_ts = None


class Book:
    def __init__(self):
        self.lv = {"B": {}, "S": {}}  # px -> {oid: Order} in arrival order

    def add(self, o):
        self.lv[o.side].setdefault(o.px, {})[o.oid] = o

    def drop(self, o):
        q = self.lv[o.side].get(o.px)
        if q is not None and o.oid in q:
            del q[o.oid]
            if not q:
                del self.lv[o.side][o.px]

    def best(self, side):
        ks = self.lv[side]
        if not ks:
            return None
        return max(ks) if side == "B" else min(ks)

    def depth(self, side, n=5):
        ks = sorted(self.lv[side], reverse=(side == "B"))[:n]
        return sum(o.open for p in ks for o in self.lv[side][p].values())


def check_tape(path):
    stem = path[:-4]
    errors = []
    err = lambda line, msg: errors.append(f"{path}:{line}: {msg}") if len(errors) < 50 else None
    insts = {r["instrument"]: r for r in read_csv(stem + ".instruments.csv")}
    groups = {r["account"]: r["group"] for r in read_csv(stem + ".accounts.csv")}
    roles = {r["account"]: r["role"] for r in read_csv(stem + ".roles.csv")} if os.path.exists(stem + ".roles.csv") else {}
    truth = read_csv(stem + ".truth.csv")
    limits = {i: (px4(r["limit_down"]), px4(r["limit_up"]), px4(r["tick"])) for i, r in insts.items()}

    orders, books = {}, defaultdict(Book)
    trades = []  # (ts, inst, px, qty, buy Order, sell Order, aggr)
    last_seq, last_ts, late = 0, None, 0
    day = None
    with open(path, newline="") as f:
        first = f.readline().rstrip("\r\n")
        if first != HEADER:
            err(1, f"header is {first!r}")
        for line, raw in enumerate(f, 2):
            row = raw.rstrip("\r\n").split(",")
            if len(row) != 11:
                err(line, f"{len(row)} fields")
                continue
            seq_s, ts_s, kind, oid_s, acct, inst, side, price, qty_s, coid_s, cacct = row
            try:
                seq, ts, oid, qty = int(seq_s), int(ts_s), int(oid_s), int(qty_s)
            except ValueError:
                err(line, "non-integer seq/ts/order_id/qty")
                continue
            if seq != last_seq + 1:
                err(line, f"seq {seq} after {last_seq}")
            last_seq = seq
            if last_ts is not None and ts < last_ts:
                late += 1
            last_ts = ts if last_ts is None else max(last_ts, ts)
            if day is None:
                d = datetime.fromtimestamp(ts / NS, SHANGHAI).date()
                at = lambda h, m, d=d: int(datetime(d.year, d.month, d.day, h, m, tzinfo=SHANGHAI).timestamp()) * NS
                day = dict(o=at(9, 30), lb=at(11, 30), le=at(13, 0), call=at(14, 57), close=at(15, 0))
            cont = day["o"] <= ts < day["lb"] or day["le"] <= ts < day["call"]
            call = day["call"] <= ts < day["close"]
            if kind not in ("N", "C", "T") or side not in ("B", "S") or qty <= 0:
                err(line, f"kind {kind!r} side {side!r} qty {qty}")
                continue
            if not ACCT.match(acct) or not INST.match(inst) or not PRICE.match(price) or len(price.split(".")[-1]) != 4:
                err(line, f"bad account/instrument/price field ({acct!r}, {inst!r}, {price!r})")
                continue
            if acct not in groups:
                err(line, f"account {acct} not in accounts.csv")
            if inst not in limits:
                err(line, f"instrument {inst} not in instruments.csv")
                continue
            p = px4(price)
            ld, lu, tick = limits[inst]
            if p <= 0 or p % tick or not (ld <= p <= lu):
                err(line, f"price {price} off tick or outside [{ld / 1e4}, {lu / 1e4}]")
            book = books[inst]
            if kind == "N":
                if coid_s or cacct:
                    err(line, "N with contra fields")
                if oid in orders:
                    err(line, f"order {oid} announced twice")
                    continue
                if not (cont or call):
                    err(line, "N outside the trading sessions")
                if cont:
                    bb, ba = book.best("B"), book.best("S")
                    if bb is not None and ba is not None and bb >= ba:
                        err(line, f"book crossed before a new order ({bb} >= {ba})")
                o = Order(oid, seq, ts, acct, inst, side, p, qty)
                o.cancel_ts = None
                orders[oid] = o
                book.add(o)
            elif kind == "C":
                o = orders.get(oid)
                if coid_s or cacct:
                    err(line, "C with contra fields")
                if o is None:
                    err(line, f"C for unknown order {oid}")
                    continue
                if o.open == 0:
                    err(line, f"C for order {oid} that is done")
                    continue
                if (o.acct, o.inst, o.side, o.px) != (acct, inst, side, p):
                    err(line, f"C fields differ from order {oid}'s N")
                if qty != o.open:
                    err(line, f"C qty {qty} != open {o.open}")
                if not cont:
                    err(line, "C outside continuous trading")
                o.open = 0
                o.cancel_ts = ts
                book.drop(o)
            else:
                buy, sell = orders.get(oid), orders.get(int(coid_s) if coid_s.isdigit() else -1)
                if buy is None or sell is None:
                    err(line, f"T refers to unknown order ({oid}, {coid_s})")
                    continue
                if buy.side != "B" or sell.side != "S" or buy.acct != acct or sell.acct != cacct:
                    err(line, "T buyer/seller fields do not match the orders")
                if buy.inst != inst or sell.inst != inst:
                    err(line, "T instrument differs from its orders")
                if qty > buy.open or qty > sell.open:
                    err(line, f"T qty {qty} exceeds open ({buy.open}, {sell.open})")
                    continue
                later = buy if buy.seq > sell.seq else sell
                if side != later.side:
                    err(line, "T side is not the later order's side")
                if buy.px < p or sell.px > p:
                    err(line, "T price outside the two limits")
                if cont:
                    rest = sell if later is buy else buy
                    if p != rest.px:
                        err(line, "T price is not the resting order's price")
                    # price-time priority: the resting order is first at the best level
                    bp = book.best(rest.side)
                    first = next(iter(book.lv[rest.side].get(bp, {}).values()), None)
                    if first is not rest:
                        err(line, f"T breaks price-time priority (resting {rest.oid})")
                elif ts < day["close"]:
                    err(line, "T outside continuous trading and before the 15:00 uncross")
                for o in (buy, sell):
                    o.open -= qty
                    o.filled += qty
                    if o.open == 0:
                        book.drop(o)
                trades.append((ts, inst, p, qty, buy, sell, side, cont))
    close_px = defaultdict(set)
    for t in trades:
        if not t[7]:
            close_px[t[1]].add(t[2])
    for i, ps in close_px.items():
        if len(ps) != 1:
            err(0, f"{i}: closing call traded at {len(ps)} prices")
    return dict(path=path, errors=errors, late=late, records=last_seq, orders=orders, trades=trades,
                groups=groups, roles=roles, truth=truth, limits=limits, day=day)


# -- measurements -------------------------------------------------------------


def clusters(items, key_ts, gap):
    out, cur = [], []
    for it in items:
        if cur and key_ts(it) - key_ts(cur[-1]) > gap:
            out.append(cur)
            cur = []
        cur.append(it)
    if cur:
        out.append(cur)
    return out


def windows(items, key_ts, span):
    """Groups of items whose times lie within `span` of the group's first."""
    out = []
    for it in items:
        if out and key_ts(it) - key_ts(out[-1][0]) <= span:
            out[-1].append(it)
        else:
            out.append([it])
    return out


def med(xs):
    return statistics.median(xs) if xs else float("nan")


class Replay:
    """Per-instrument depth and touch at any seq, by replaying the tape once."""

    def __init__(self, d, wanted):
        self.snap = {}  # seq -> (best same side, depth5 same side, opposite best)
        want = {o.seq for o in wanted}
        path = d["path"]
        books = defaultdict(Book)
        live = {}
        with open(path) as f:
            f.readline()
            for raw in f:
                r = raw.rstrip("\n").split(",")
                seq, kind, oid, inst, side, p, q = int(r[0]), r[2], int(r[3]), r[5], r[6], px4(r[7]), int(r[8])
                b = books[inst]
                if kind == "N":
                    if seq in want:
                        self.snap[seq] = (b.best(side), b.depth(side), b.best("S" if side == "B" else "B"))
                    o = Order(oid, seq, 0, "", inst, side, p, q)
                    live[oid] = o
                    b.add(o)
                elif kind == "C":
                    o = live.pop(oid, None)
                    if o:
                        o.open = 0
                        b.drop(o)
                else:
                    for k in (oid, int(r[9])):
                        o = live.get(k)
                        if o:
                            o.open -= q
                            if o.open <= 0:
                                b.drop(o)
                                live.pop(k)


def measure(d):
    orders, trades, groups, roles = d["orders"], d["trades"], d["groups"], d["roles"]
    tick = 100  # 0.01 in 1/10,000
    out, problems = [], []
    # -- per role ---------------------------------------------------------------
    stat = defaultdict(lambda: [set(), 0, 0, 0, 0])  # accounts, N, C, T, volume
    for o in orders.values():
        s = stat[roles.get(o.acct, "?")]
        s[0].add(o.acct)
        s[1] += 1
        s[2] += o.cancel_ts is not None
    for t in trades:
        for o in (t[4], t[5]):
            s = stat[roles.get(o.acct, "?")]
            s[3] += 1
            s[4] += t[3]
    out.append(f"  {'role':18} {'accts':>5} {'orders':>7} {'cancels':>7} {'cxl%':>6} {'fills':>6} {'volume':>9}")
    for r in sorted(stat):
        a, n, c, tr, v = stat[r]
        out.append(f"  {r:18} {len(a):5} {n:7} {c:7} {100 * c / max(n, 1):6.1f} {tr:6} {v:9}")
    mm = stat.get("market-maker")
    if mm and mm[2] < 0.9 * mm[1]:
        problems.append(f"market makers' cancel ratio {mm[2] / mm[1]:.2f} <= 0.90")
    if mm and mm[3] == 0:
        problems.append("market makers never traded")

    # -- planted actors -----------------------------------------------------------
    by = defaultdict(set)  # (pattern, group, instrument) -> accounts
    for r in d["truth"]:
        by[(r["pattern"], groups[r["account"]], r["instrument"])].add(r["account"])
    big_orders = [o for o in orders.values() if any(o.acct in acc and o.inst == i for (p, g, i), acc in by.items() if p in ("spoofing", "layering"))]
    rp = Replay(d, big_orders)
    day_vol = defaultdict(int)
    for t in trades:
        day_vol[t[1]] += t[3]
    out.append("  planted actors (measured from the tape):")
    for (pat, grp, inst), accts in sorted(by.items()):
        mine = sorted((o for o in orders.values() if o.acct in accts and o.inst == inst), key=lambda o: o.seq)
        mytr = [t for t in trades if t[1] == inst and (t[4].acct in accts or t[5].acct in accts)]
        label = f"    {pat:17} {inst} {'+'.join(sorted(accts))}:"
        if pat in ("spoofing", "layering"):
            big = [o for o in mine if o.qty >= 2000]
            eps = []
            for cl in clusters(big, lambda o: o.ts, 100 * MS):
                side = cl[0].side
                if any(o.side != side for o in cl):
                    continue
                touch, pre, opp_best = rp.snap[cl[0].seq]
                if touch is None:
                    continue
                tot = sum(o.qty for o in cl)
                behind = sorted({(touch - o.px) // tick if side == "B" else (o.px - touch) // tick for o in cl})
                cxl = [o.cancel_ts - o.ts for o in cl if o.cancel_ts is not None]
                cxl_frac = sum(o.qty - o.filled for o in cl if o.cancel_ts is not None) / tot
                small = [o for o in mine if o.side != side and o.qty <= 1000 and cl[0].ts - 200 * MS <= o.ts <= cl[0].ts]
                t_end = max((o.cancel_ts or o.ts) for o in cl) + 1500 * MS
                opp_fill = sum(t[3] for t in mytr if cl[0].ts - 200 * MS <= t[0] <= t_end and ((t[4].acct in accts and t[4].side != side) or (t[5].acct in accts and t[5].side != side)))
                eps.append(dict(n=len(cl), tot=tot, pre=pre, share=tot / max(pre + tot, 1), behind=behind,
                                cxl_ms=max(cxl) / MS if cxl else None, cxl_frac=cxl_frac, small=bool(small),
                                small_filled=sum(o.filled for o in small), opp_fill=opp_fill,
                                accts={o.acct for o in cl}, small_accts={o.acct for o in small}))
            if pat == "spoofing":
                good = [e for e in eps if e["small"] and e["share"] > 0.5 and e["cxl_ms"] is not None and e["cxl_ms"] <= 1100 and max(e["behind"]) <= 2]
                worked = [e for e in good if e["small_filled"] > 0]
                two = any(e["accts"] != e["small_accts"] for e in good)
                out.append(f"{label} {len(good)} episodes; spoof/(best-5 incl. spoof) median {med([e['share'] for e in good]):.2f} "
                           f"(spoof/pre-existing {med([e['tot'] / max(e['pre'], 1) for e in good]):.1f}x), levels behind touch {sorted({b for e in good for b in e['behind']})}, "
                           f"cancel after median {med([e['cxl_ms'] for e in good]):.0f} ms (max {max([e['cxl_ms'] for e in good], default=0):.0f}), "
                           f"cancelled {med([e['cxl_frac'] for e in good]):.0%}, small order filled in {len(worked)}/{len(good)}"
                           + ("; small and large from two accounts" if two else ""))
                if len(good) < 3 or not worked:
                    problems.append(f"spoofing {inst} {sorted(accts)}: {len(good)} Coscia-shaped episodes, {len(worked)} worked")
            else:
                good = [e for e in eps if 4 <= e["n"] <= 6 and e["behind"] == list(range(e["behind"][0], e["behind"][0] + e["n"])) and e["behind"][0] >= 1
                        and e["cxl_ms"] is not None and 900 <= e["cxl_ms"] <= 5200]
                out.append(f"{label} {len(good)} episodes; layers {sorted({e['n'] for e in good})}, first layer {sorted({e['behind'][0] for e in good})} tick(s) behind, "
                           f"layers/(best-5 incl.) median {med([e['share'] for e in good]):.2f}, held median {med([e['cxl_ms'] for e in good]) / 1000:.1f} s, "
                           f"cancelled {med([e['cxl_frac'] for e in good]):.0%}, other side filled in {sum(e['opp_fill'] > 0 for e in good)}/{len(good)} (median {med([e['opp_fill'] for e in good]):.0f} sh)")
                if len(good) < 3 or not any(e["opp_fill"] > 0 for e in good):
                    problems.append(f"layering {inst} {sorted(accts)}: {len(good)} Sarao-shaped episodes")
        elif pat == "momentum-ignition":
            agg = [t for t in mytr if t[7] and ((t[6] == "B" and t[4].acct in accts) or (t[6] == "S" and t[5].acct in accts))]
            eps = []
            last_ign = None
            for cl in windows(agg, lambda t: t[0], 2 * NS):
                side = cl[0][6]
                if last_ign is not None and cl[0][0] <= last_ign[0] + 30 * NS and side != last_ign[1]:
                    continue  # the trade-out of the previous ignition
                last_ign = (cl[0][0], side)
                prior = [t for t in trades if t[1] == inst and t[0] < cl[0][0]]
                ref = prior[-1][2] if prior else cl[0][2]
                # the walk: every print in the two seconds from the burst's first
                win = [t for t in trades if t[1] == inst and cl[0][0] <= t[0] <= cl[0][0] + 2 * NS]
                ext = max(t[2] for t in win) if side == "B" else min(t[2] for t in win)
                move = abs(ext - ref) // tick
                dur = (cl[-1][0] - cl[0][0]) / NS
                bought = sum(t[3] for t in cl)
                out_tr = [t for t in mytr if cl[-1][0] < t[0] <= cl[0][0] + 30 * NS and ((side == "B" and t[5].acct in accts) or (side == "S" and t[4].acct in accts))]
                q_out = sum(t[3] for t in out_tr)
                avg_out = sum(t[2] * t[3] for t in out_tr) / q_out if q_out else None
                gain = (avg_out - ref) / tick * (1 if side == "B" else -1) if avg_out else None
                others = sum(t[3] for t in trades if t[1] == inst and cl[-1][0] < t[0] <= cl[-1][0] + 10 * NS and t[6] == side and (t[4] if side == "B" else t[5]).acct not in accts)
                if bought >= 500:
                    eps.append(dict(move=move, dur=dur, bought=bought, out=q_out, gain=gain, chase=others))
            good = [e for e in eps if e["move"] >= 5 and e["dur"] <= 2.0 and e["out"] > 0 and e["gain"] is not None and e["gain"] >= 3]
            out.append(f"{label} {len(good)}/{len(eps)} ignitions: moves {[e['move'] for e in eps]} ticks in {[round(e['dur'], 1) for e in eps]} s, "
                       f"crowd chased {[e['chase'] for e in eps]} sh, traded out {[e['out'] for e in eps]} of {[e['bought'] for e in eps]} sh "
                       f"at {[None if e['gain'] is None else round(e['gain'], 1) for e in eps]} ticks past the start")
            if len(good) < 2:
                problems.append(f"momentum-ignition {inst} {sorted(accts)}: {len(good)} ignitions of the promised shape")
        elif pat == "ramping":
            buys = [t for t in mytr if t[4].acct in accts and t[7]]
            if not buys:
                problems.append(f"ramping {inst}: no buys")
                continue
            t0, t1 = buys[0][0], buys[-1][0]
            prior = [t for t in trades if t[1] == inst and t[0] < t0]
            ref = prior[-1][2] if prior else buys[0][2]
            win = [t for t in trades if t[1] == inst and t0 <= t[0] <= t1]
            hi = max(t[2] for t in win)
            share = sum(t[3] for t in win if t[4].acct in accts) / sum(t[3] for t in win)
            lift = hi / ref - 1
            out.append(f"{label} lift {lift:+.1%} in {(t1 - t0) / NS:.0f} s, group share of buy volume {share:.0%}, group never sold: {not any(t[5].acct in accts for t in win)}")
            if not (0.05 <= lift <= 0.10 and (t1 - t0) <= 180 * NS and share > 0.5):
                problems.append(f"ramping {inst}: lift {lift:.3f} in {(t1 - t0) / NS:.0f} s, share {share:.2f}")
        elif pat == "marking-close":
            call = [t for t in trades if t[1] == inst and not t[7]]
            cont = [t for t in trades if t[1] == inst and t[7]]
            if not call or not cont:
                problems.append(f"marking-close {inst}: no closing call trades")
                continue
            lift = call[0][2] / cont[-1][2] - 1
            share = sum(t[3] for t in call if t[4].acct in accts) / sum(t[3] for t in call)
            out.append(f"{label} close {call[0][2] / 1e4:.2f} vs last continuous {cont[-1][2] / 1e4:.2f} ({lift:+.1%}), group share of call buying {share:.0%}, "
                       f"call trades stamped {datetime.fromtimestamp(call[0][0] / NS, SHANGHAI).time()}")
            if not (0.04 <= lift <= 0.07 and share > 0.5 and min(t[0] for t in call) >= d["day"]["close"]):
                problems.append(f"marking-close {inst}: lift {lift:.3f}, share {share:.2f}")
        elif pat == "wash-trade":
            w = [t for t in trades if t[1] == inst and groups[t[4].acct] == grp and groups[t[5].acct] == grp]
            v = sum(t[3] for t in w)
            out.append(f"{label} {len(w)} trades within the group, {v} sh = {v / day_vol[inst]:.0%} of the day's volume")
            if len(w) < 3 or v < 0.1 * day_vol[inst]:
                problems.append(f"wash-trade {inst}: {len(w)} trades, {v / day_vol[inst]:.2f} of volume")
        elif pat == "quote-stuffing":
            msgs = sorted([o.ts for o in mine] + [o.cancel_ts for o in mine if o.cancel_ts is not None])
            counts, j = [], 0  # messages in the one-second window ending at each message
            for i, t in enumerate(msgs):
                while t - msgs[j] >= NS:
                    j += 1
                counts.append(i - j + 1)
            peak = max(counts, default=0)
            bursts, until = 0, -1  # disjoint seconds holding >= 300
            for i, n in enumerate(counts):
                if n >= 300 and msgs[i] - NS >= until:
                    bursts += 1
                    until = msgs[i]
            out.append(f"{label} {bursts} one-second bursts of >= 300 orders+cancels (peak {peak}/s), {len(mine)} orders, "
                       f"{sum(o.filled > 0 for o in mine)} filled")
            if bursts < 2:
                problems.append(f"quote-stuffing {inst}: {bursts} bursts")
    # benign sanity: nobody outside the truth trades with its own group
    truth_groups = {groups[r["account"]] for r in d["truth"] if r["pattern"] == "wash-trade"}
    selfs = [t for t in trades if groups[t[4].acct] == groups[t[5].acct] and groups[t[4].acct] not in truth_groups]
    if selfs:
        problems.append(f"{len(selfs)} trades within one group outside the planted wash traders")
    return out, problems


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    paths = sys.argv[1:] or sorted(p for p in glob.glob(os.path.join(here, "days", "*.csv")) if os.path.basename(p).count(".") == 1)
    if not paths:
        print("no tapes found", file=sys.stderr)
        return 1
    bad = 0
    for p in paths:
        d = check_tape(p)
        lines, problems = measure(d)
        print(f"{p}: {d['records']} records, {len(d['orders'])} orders, {len(d['trades'])} trades, "
              f"{d['late']} out of event-time order, {os.path.getsize(p) / 1e6:.2f} MB")
        print("\n".join(lines))
        for e in d["errors"] + problems:
            print(f"  PROBLEM: {e}")
        bad += len(d["errors"]) + len(problems)
    print("OK" if not bad else f"{bad} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
