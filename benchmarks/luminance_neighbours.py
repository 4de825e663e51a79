"""What the ``neighbours`` filter of ``diffinject.keep`` knows before it sees a synthetic image: the same vote (the
labels of the k real training images nearest in centred, scaled luminance) used as a classifier of the test set. On
Colored MNIST luminance ignores the hue, so this reads the digit alone; its unbiased accuracy is the prior the filter
brings, to set beside the accuracy of a DiffInject run that uses it.

    python benchmarks/luminance_neighbours.py --ratios 0.01 0.05 --k 5
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/cmnist/diffinject_matched.yaml")
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.01, 0.05])
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    from diffdebias.config import load_config
    from diffdebias.data import load_dataset
    from diffdebias.evaluation.metrics import accuracy_metrics
    from diffdebias.methods.synthetic_filters import neighbour_votes

    print("ratio  k  test_accuracy  unbiased  conflicting")
    for ratio in args.ratios:
        cfg = load_config(args.config, [f"data.conflict_ratio={ratio}", f"seed={args.seed}"])
        d = load_dataset(cfg.data)
        pred = neighbour_votes(d.test.images, d.train, args.k).argmax(1)
        m = accuracy_metrics(pred, d.test.labels, d.test.bias, d.num_classes, d.num_bias)
        print(f"{ratio}  {args.k}  {100 * m['accuracy']:.2f}  {100 * m['unbiased_accuracy']:.2f}  "
              f"{100 * m['conflicting_accuracy']:.2f}", flush=True)


if __name__ == "__main__":
    main()
