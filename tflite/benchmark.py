"""Measure the client head's cost fairly: LiteRT (.tflite, TF-free process) vs the Keras client, same CPU.

    python tflite/benchmark.py --out results/mobile                 # paper size (224x224, width 1) + small profile
    python tflite/benchmark.py --profile tiny --no-paper --repeats 3

Both runtimes release on the same grid (dpact_tf.grid) at the same epsilon with the same thread count; the first
result (model load + warm-up)
is reported apart from the timed repeats (median and interquartile range), which are interleaved: every runtime
waits, loaded and warm, in its own process and each round times one call of each in turn; the batch load is the
paper's (8 LFW JPEGs decoded and resized, from $DPACT_LFW_DIR, else synthetic JPEGs); memory is the increase over
a bare interpreter process.  Each export and runner variant (dpact_tf.repro.mobile_cost.VARIANTS) is measured.
Prints ratios beside the paper's Nexus 6P bounds (different hardware!) and writes <out>/mobile_cost.json.
"""
import argparse
import sys

from dpact_tf.repro.mobile_cost import PAPER_NEXUS6P, VARIANTS, run_mobile_benchmark
from dpact_tf.repro.profiles import get_profile


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="small", help="the profile whose input size is measured too")
    parser.add_argument("--no-paper", action="store_true", help="skip the paper's 224x224 full-width head")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--epsilon", type=float, default=5.0, help="the epsilon of both runtimes' release")
    parser.add_argument("--threads", type=int, help="threads of both runtimes (default: all cores)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--out", default="results/mobile")
    args = parser.parse_args()
    prof = get_profile(args.profile)
    configs = [] if args.no_paper else [("paper", 224, 1.0)]
    configs.append((prof.name, prof.image_size, prof.width))
    res = run_mobile_benchmark(configs, out_dir=args.out, batch=args.batch, repeats=args.repeats or prof.benchmark_repeats,
                               epsilon=args.epsilon, num_threads=args.threads, variants=args.variants,
                               progress=lambda line: print(line, flush=True))
    p = PAPER_NEXUS6P
    print(f"\nPaper, Nexus 6P (different hardware), batch of 8: load < {p['load_s']} s, forward < {p['forward_s']} s, "
          f"backward < {p['backward_s_per_sample']} s/sample, < {p['memory_mb']:.0f} MB")
    print(f"Ours on {res['hardware']['cpu']}, {res['num_threads']} threads, epsilon {res['epsilon']:g} in both runtimes, "
          f"bare interpreter process {res['bare_process_mb']:.0f} MB, load average "
          f"{res['load_avg_start']:.2f} -> {res['load_avg_end']:.2f}")
    for c in res["configs"]:
        k = c["keras"]
        print(f"[{c['label']}] Keras: model load {k['model_load_s']:.3f} s, forward {k['forward_s']:.3f} s "
              f"(IQR {k['forward_iqr_s'][0]:.3f}-{k['forward_iqr_s'][1]:.3f}), "
              f"backward {k['backward_s_per_sample']:.4f} s/sample")
        for name, lite in c["variants"].items():
            r = c["ratio_litert_over_keras"][name]
            print(f"[{c['label']}] LiteRT {name}: batch load {lite['batch_load_s']:.3f} s ({lite['jpegs']} JPEGs), "
                  f"model load {lite['model_load_s']:.3f} s, forward {lite['forward_s']:.3f} s "
                  f"(IQR {lite['forward_iqr_s'][0]:.3f}-{lite['forward_iqr_s'][1]:.3f}; "
                  f"{lite['conv1_1_gflop_per_s'] or float('nan'):.1f} GFLOP/s), backward "
                  f"{lite.get('backward_s_per_sample', float('nan')):.4f} s/sample, memory release "
                  f"{lite['release_memory_mb']:.0f} MB / train {lite.get('train_memory_mb', float('nan')):.0f} MB | "
                  f"LiteRT/Keras forward {r.get('forward_s', float('nan')):.2f} (round by round "
                  f"{r['forward_paired']['median']:.2f}, IQR {r['forward_paired']['iqr'][0]:.2f}-"
                  f"{r['forward_paired']['iqr'][1]:.2f}; CPU time {r['forward_cpu']:.2f}), "
                  f"backward {r.get('backward_s_per_sample', float('nan')):.2f}")
        print(f"[{c['label']}] upload per image: " + ", ".join(f"{e} {b:,} B" for e, b in c["upload_bytes_per_image"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
