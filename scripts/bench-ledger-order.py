#!/usr/bin/env python3
"""Raw SQLite: how the ledger's table shape and the order rows arrive in
decide insert speed (BENCHMARKS.md, "Ledger in arrival order").

    python3 scripts/bench-ledger-order.py CHANGES SHAPE ORDER

SHAPE: cur (schema 2: WITHOUT ROWID keyed by id, (tbl, key) and (tbl, hlc)
indexes), rowid (a rowid table with a unique id and the same two indexes),
rowid_partial (schema 3: the time index on sales only), rowid_partial_hub
(schema 3 plus the hub's (store_id, id) index), rowid_nohlc (no
time index). ORDER: hub (20 devices take turns, 1,000 changes each, over
the same milliseconds, as the hub's log hands them to a till) or seq (one
device, ids ascending). Each change is a sale and 3 stock movements;
pages of 500 changes per transaction, WAL, synchronous=FULL, 16 MB cache.
"""
import sqlite3, os, sys, time, random, uuid, json
N = int(sys.argv[1]) if len(sys.argv) > 1 else 100000   # sale changes
variant = sys.argv[2]
order = sys.argv[3]  # hub | seq
DEV, BATCH, PAGE = 20, 1000, 500
rng = random.Random(7)
def v7(ms):
    r = rng.getrandbits(80)
    n = (ms << 80) | r
    n = (n & ~(0xF << 76)) | (0x7 << 76)
    return str(uuid.UUID(int=n))
SQL = {
 'cur': """CREATE TABLE ledger(id TEXT PRIMARY KEY, tbl TEXT NOT NULL, key TEXT, store_id TEXT NOT NULL,
        device TEXT NOT NULL, hlc INTEGER NOT NULL, data TEXT NOT NULL) WITHOUT ROWID;
    CREATE INDEX ledger_key ON ledger(tbl, key); CREATE INDEX ledger_hlc ON ledger(tbl, hlc);""",
 'rowid': """CREATE TABLE ledger(seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, tbl TEXT NOT NULL, key TEXT, store_id TEXT NOT NULL,
        device TEXT NOT NULL, hlc INTEGER NOT NULL, data TEXT NOT NULL);
    CREATE INDEX ledger_key ON ledger(tbl, key); CREATE INDEX ledger_hlc ON ledger(tbl, hlc);""",
 'rowid_partial': """CREATE TABLE ledger(id TEXT NOT NULL UNIQUE, tbl TEXT NOT NULL, key TEXT, store_id TEXT NOT NULL,
        device TEXT NOT NULL, hlc INTEGER NOT NULL, data TEXT NOT NULL);
    CREATE INDEX ledger_key ON ledger(tbl, key); CREATE INDEX ledger_sales_hlc ON ledger(hlc, id) WHERE tbl = 'sales';""",
 'rowid_partial_hub': """CREATE TABLE ledger(id TEXT NOT NULL UNIQUE, tbl TEXT NOT NULL, key TEXT, store_id TEXT NOT NULL,
        device TEXT NOT NULL, hlc INTEGER NOT NULL, data TEXT NOT NULL);
    CREATE INDEX ledger_key ON ledger(tbl, key); CREATE INDEX ledger_sales_hlc ON ledger(hlc, id) WHERE tbl = 'sales';
    CREATE INDEX hub_ledger_store ON ledger(store_id, id);""",
 'rowid_nohlc': """CREATE TABLE ledger(seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, tbl TEXT NOT NULL, key TEXT, store_id TEXT NOT NULL,
        device TEXT NOT NULL, hlc INTEGER NOT NULL, data TEXT NOT NULL);
    CREATE INDEX ledger_key ON ledger(tbl, key);""",
}
store = str(uuid.uuid4())
devs = [(str(uuid.uuid4()), i) for i in range(DEV)]
def sale_rows(dev, idx, seq, now, hlc):
    sid = v7(now)
    rows = [(sid, 'sales', f"S{idx}-{seq:07}", store, dev, hlc,
             json.dumps({"receipt": f"S{idx}-{seq:07}", "device_id": dev, "currency": "EUR", "lines": [["SKU-1",1,250],["SKU-2",2,500],["SKU-3",1,380]], "payments": [["cash",1130]], "taxes": [[1000,112]], "subtotal_minor":1130, "discount_minor":0, "tax_minor":112, "total_minor":1130, "rounding_minor":0, "at_ms": now}, separators=(',',':')))]
    for k, sku in enumerate(["SKU-1","SKU-2","SKU-3"]):
        rows.append((v7(now), 'stock_movements', sku, store, dev, hlc+1+k, json.dumps({"sku":sku,"qty":-1,"reason":"sale","ref_id":sid}, separators=(',',':'))))
    return rows
changes = []
start = 1_780_000_000_000
if order == 'hub':
    seqs = [0]*DEV; made = 0; rnd = 0
    while made < N:
        for d,(dev,idx) in enumerate(devs):
            for j in range(min(BATCH, N-made)):
                seqs[d]+=1; now = start + rnd*BATCH + j
                changes.append(sale_rows(dev, idx, seqs[d], now, (now<<16)))
            made = len(changes)
            if made >= N: break
        rnd += 1
else:
    dev, idx = devs[0]
    for i in range(N):
        now = start + i
        changes.append(sale_rows(dev, idx, i+1, now, now<<16))
path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"ledger-order-{variant}-{order}.db")
for f in [path, path+"-wal", path+"-shm"]:
    if os.path.exists(f): os.remove(f)
c = sqlite3.connect(path, isolation_level=None)
c.execute("PRAGMA journal_mode=WAL"); c.execute("PRAGMA synchronous=FULL"); c.execute("PRAGMA cache_size=-16000")
c.executescript(SQL[variant])
ins = "INSERT OR IGNORE INTO ledger(id, tbl, key, store_id, device, hlc, data) VALUES (?,?,?,?,?,?,?)"
t0 = time.perf_counter(); c0 = time.process_time()
for p in range(0, N, PAGE):
    c.execute("BEGIN IMMEDIATE")
    for ch in changes[p:p+PAGE]:
        c.executemany(ins, ch)
    c.execute("COMMIT")
wall = time.perf_counter()-t0; cpu = time.process_time()-c0
size = os.path.getsize(path)
c.close()
for f in [path, path+"-wal", path+"-shm"]:
    if os.path.exists(f): os.remove(f)
print(f"{variant:13} {order:4} {N/wall:9.0f} changes/s  cpu {N/cpu:9.0f}/cpu-s  size {size>>20} MB")
