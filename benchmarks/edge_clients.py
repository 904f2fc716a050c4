"""One edge server, 1 and N phones at once over loopback: per-client step latency and aggregate throughput.

For each client count, a fresh server half of the profile (same seed) is served on 127.0.0.1 by
:func:`dpact_tf.edge.ops.make_server`, and that many :class:`~dpact_tf.edge.client.EdgeClient` threads -- one
session each, in this process -- send training steps at once: batches of the profile's size of synthetic
no-noise activations (uniform in [0, R], the profile's activation shape), uploaded as ``--encoding``.  Every
request is built before the clock starts; a step's latency is the time from sending it to its reply.  One
untimed step first compiles the server's step.  The server serialises the steps of all clients (one SGD
update of the shared model per step), so with N clients each waits for the others' steps: the aggregate
images/s is what the server sustains, the per-client latency what a phone sees.  ``--repeats`` runs every
client count that many times, interleaved, so that load from other jobs on the machine hits each alike: the
latencies are pooled over the repeats, and the throughput is the median (and range) of the repeats'.

    python benchmarks/edge_clients.py --profile small --clients 1 8 --steps 12 --repeats 3 [--json out.json]
"""
import argparse
import json
import threading
import time

import numpy as np

from dpact_tf.edge.cli import build_split, training_config
from dpact_tf.edge.client import EdgeClient
from dpact_tf.edge.model import ServerHalf
from dpact_tf.edge.ops import make_server
from dpact_tf.edge.server import EdgeService
from dpact_tf.encoding import ENCODINGS
from dpact_tf.repro.profiles import get_profile


def run(prof, clients: int, steps: int, encoding: str, seed: int = 0) -> dict:
    """``clients`` concurrent clients, ``steps`` timed steps each: latencies (s) and wall time of the timed part."""
    split = build_split(prof, prof.synthetic_identities, "conv1_1", seed, None, 1e-5)
    shape = tuple(split.activation_shape)
    service = EdgeService(ServerHalf(split.server, training_config(prof), 10 * clients * steps),
                          num_classes=prof.synthetic_identities, cut=split.cut, activation_shape=shape,
                          max_batch=prof.batch_size, activation_range=split.dp_layer.true_range)
    server, port = make_server(service, host="127.0.0.1", port=0, max_workers=max(16, 2 * clients))
    server.start()
    rng = np.random.default_rng(seed)
    phones = [EdgeClient(f"127.0.0.1:{port}", client_id=f"phone{k}", epsilon=None, delta=1e-5, cut=split.cut,
                         activation_shape=shape, encoding=encoding, timeout=600.0) for k in range(clients)]

    def request(phone, step):
        x = rng.uniform(0, split.dp_layer.true_range, (prof.batch_size,) + shape).astype(np.float32)
        return phone.train_request(step, x, rng.integers(0, prof.synthetic_identities, prof.batch_size))

    requests = []
    for phone in phones:
        requests.append([request(phone, step) for step in range(1, steps + 2)])
        phone.connect()
    phones[0].send_train_step(requests[0][0])  # compiles the server's step; not timed
    latencies = [[] for _ in phones]
    start = threading.Barrier(clients + 1)

    def drive(k):
        todo = requests[k][1:] if k == 0 else requests[k][:-1]  # phone 0 already sent its step 1
        start.wait()
        for req in todo:
            began = time.perf_counter()
            phones[k].send_train_step(req)
            latencies[k].append(time.perf_counter() - began)

    threads = [threading.Thread(target=drive, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    for phone in phones:
        phone.close()
    server.stop(grace=None)
    assert service.half.steps == clients * steps + 1, "every step is applied once"
    return {"latencies": latencies, "wall": wall, "activation_shape": list(shape)}


def summary(prof, clients: int, results: list) -> dict:
    """Latency percentiles over every step of ``results`` (repeats of one client count) and the median and range
    of their throughputs."""
    every = np.concatenate([np.asarray(v) for r in results for v in r["latencies"]])
    rates = [sum(map(len, r["latencies"])) * prof.batch_size / r["wall"] for r in results]
    return {"clients": clients, "steps_per_client": len(results[0]["latencies"][0]), "repeats": len(results),
            "latency_median_ms": 1000 * float(np.median(every)),
            "latency_p90_ms": 1000 * float(np.percentile(every, 90)),
            "images_per_s": float(np.median(rates)), "images_per_s_range": [min(rates), max(rates)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8], help="client counts to measure")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per client")
    parser.add_argument("--repeats", type=int, default=1, help="runs of every client count, interleaved")
    parser.add_argument("--encoding", choices=ENCODINGS, default="float32", help="upload encoding (no noise)")
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args()
    if min(args.steps, args.repeats, *args.clients) < 1:
        parser.error("--steps, --repeats and every --clients must be >= 1")
    prof = get_profile(args.profile)
    results = {n: [] for n in args.clients}
    for _ in range(args.repeats):
        for n in args.clients:
            results[n].append(run(prof, n, args.steps, args.encoding))
    rows = [summary(prof, n, results[n]) for n in args.clients]
    shape = results[args.clients[0]][0]["activation_shape"]
    print(f"profile {prof.name}: activation {shape}, batch {prof.batch_size}, {args.encoding} uploads, "
          f"{args.steps} timed steps per client, {args.repeats} repeats")
    print(f"{'clients':>7} {'median ms':>10} {'p90 ms':>8} {'images/s':>9} {'(min..max)':>12}")
    for r in rows:
        low, high = r["images_per_s_range"]
        print(f"{r['clients']:>7} {r['latency_median_ms']:10.0f} {r['latency_p90_ms']:8.0f} {r['images_per_s']:9.0f} "
              f"{f'({low:.0f}..{high:.0f})':>12}")
    first, last = rows[0], rows[-1]
    if len(rows) > 1:
        print(f"{last['clients']} clients / {first['clients']}: latency x"
              f"{last['latency_median_ms'] / first['latency_median_ms']:.2f}, throughput x"
              f"{last['images_per_s'] / first['images_per_s']:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"profile": prof.name, "encoding": args.encoding, "batch_size": prof.batch_size,
                       "activation_shape": shape, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
