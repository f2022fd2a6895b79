"""Image-id lists that hold one of the challenge set's image groups out of training (issue 20).

The challenge's corrected training set (``stage1_train_fixed``) mixes four kinds of images, and a
model validated on a split of it has seen every kind. To score a kind as a source the model never
saw, train with that group left out and score all of its images. This writes, for each group,
the ``exclude`` file of a dataset entry: the embedded sample's ids (as ``config/pretrained.yaml``
leaves out) plus every image of the group. The groups are those of ``bench_sources.py``:

- ``fluo_small`` / ``fluo_large``: fluorescence whose nuclei's median diameter in the ground
  truth is under / at least 20 px;
- ``histology`` and ``brightfield``: the modality guess of the preprocess index.

    python benchmarks/heldout_groups.py --accuracy-workdir results/run-sources_he --out config/heldout

Then train with ``config/heldout_<group>.yaml`` (the shipped main model's recipe, from scratch)
and score all the group's images with ``bench_sources.py --sources dsb_all --groups <group>``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchlib import ROOT, challenge_index, image_group

SAMPLE_IDS = ROOT / "resources" / "sample" / "sample_ids.txt"


def group_ids(accuracy_workdir: Path) -> dict[str, list[str]]:
    """Every image of the preprocessed challenge set, by group (``{group: [image ids]}``)."""
    from nucseg.datasets import read_sample

    index, dataset = challenge_index(accuracy_workdir)
    groups: dict[str, list[str]] = {}
    for row in index.itertuples():
        groups.setdefault(image_group(row.modality, read_sample(dataset, row.image_id).labels), []).append(row.image_id)
    return {g: sorted(ids) for g, ids in sorted(groups.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accuracy-workdir", type=Path, default=ROOT / "results" / "accuracy", help="bench_accuracy.py's workdir")
    parser.add_argument("--out", type=Path, default=ROOT / "config" / "heldout")
    args = parser.parse_args()
    sample = [line.strip() for line in SAMPLE_IDS.read_text().splitlines() if line.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    for group, ids in group_ids(args.accuracy_workdir).items():
        (args.out / f"{group}.txt").write_text("\n".join(sample + ids) + "\n")
        print(f"{group}: {len(ids)} images held out (+ the sample's {len(sample)}) -> {args.out / f'{group}.txt'}")


if __name__ == "__main__":
    main()
