"""The target pass's batching: seconds to form the bbh subtask queries with long target examples run one at
a time (the 1,024-padded-token cap puts every example over 512 tokens alone) against batched together.

The default model with LESS's LoRA (r=128; lora_B drawn small so every block has a gradient), the first
example of each of the first `--examples` bbh subtasks; the caps run interleaved, `--repeats` times, and
the median is printed with the largest difference of the queries from the first cap's.

    python benchmarks/target_pass_batching.py                       # 2 examples, caps 1024 and 4096, 3 repeats
    python benchmarks/target_pass_batching.py --examples 9 --caps 1024 8192
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2, help="bbh subtasks, one target example each")
    parser.add_argument("--caps", type=int, nargs="+", default=[1024, 4096], help="padded tokens per batch")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    from influence.data.targets import load_target
    from influence.features.compute import subtask_queries
    from influence.less.settings import LessSettings
    from influence.lora import add_lora
    from influence.models import load_model

    settings = LessSettings()
    loaded = load_model(None, device="cpu")
    model = add_lora(copy.deepcopy(loaded.model), settings.lora).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
    target = load_target("bbh")
    examples = [target.examples[rows[0]] for rows in list(target.subtasks().values())[:args.examples]]
    times: dict[int, list[float]] = {cap: [] for cap in args.caps}
    queries = {}
    for repeat in range(args.repeats):
        for cap in args.caps:
            start = time.perf_counter()
            queries[cap] = subtask_queries(model, loaded.tokenizer, examples, {"all": list(range(len(examples)))},
                                           batch_size=args.batch_size, max_batch_tokens=cap,
                                           max_length=settings.max_length)
            times[cap].append(time.perf_counter() - start)
            print(f"cap {cap} repeat {repeat}: {times[cap][-1]:.1f} s", flush=True)
    first = queries[args.caps[0]]
    for cap in args.caps:
        print(f"cap {cap}: median {statistics.median(times[cap]):.1f} s of {[round(t, 1) for t in times[cap]]}; "
              f"largest difference from cap {args.caps[0]}: {float((queries[cap] - first).abs().max()):.2e}")


if __name__ == "__main__":
    main()
