"""`varjax eval ...`: fid, sampling, stats, features train, convert-inception (docs/eval.md).

`add_parser(commands)` wires the subcommands into the main `varjax` parser; user mistakes
raise VarjaxError, which the main command prints as one line.
"""

from __future__ import annotations

import argparse
import json
import os

from varjax.errors import VarjaxError

DEFAULT_SAMPLES_FID = 50_000  # the published protocol
DEFAULT_SAMPLES_FD = 1_024


def _network(args):
  from varjax.eval import features
  return features.load_feature_network(args.inception_weights, args.feature_net,
                                       batch_size=args.feature_batch_size)


def _cmd_fid(args) -> None:
  from varjax.eval import fid
  from varjax.models import sampling
  if not os.path.isdir(args.run):
    raise VarjaxError(f"run directory not found: {args.run}")
  network = _network(args)
  num = args.num_samples or (DEFAULT_SAMPLES_FID if network.metric == "fid"
                             else DEFAULT_SAMPLES_FD)
  protocol = sampling.SamplingProtocol(cfg=args.cfg, top_k=args.top_k, top_p=args.top_p,
                                       seed=args.seed)
  result = fid.evaluate_run(args.run, network, tokenizer_dir=args.tokenizer, num_samples=num,
                            batch_size=args.batch_size, protocol=protocol,
                            reference_split=args.reference_split, data_dir=args.data_dir,
                            cache_dir=args.stats_dir, grid_size=0 if args.no_grid else 64)
  if args.json:
    print(json.dumps(result, indent=2))
    return
  ref = result["sample_protocol"]["reference"]
  print(f"{result['metric']} = {result['value']:.4f}  ({num} samples, cfg {args.cfg}, top-k "
        f"{args.top_k}, top-p {args.top_p}, seed {args.seed}; reference {ref['dataset']}"
        f"[{ref['split']}], {ref['count']} images; {result['seconds']} s)")
  print(f"written to {os.path.join(args.run, fid.SUMMARY_FILE)}"
        + (f"; samples in {result['grid']}" if result["grid"] else ""))


def _cmd_sampling(args) -> None:
  from varjax import progress
  from varjax.eval import sampling_table as table, verifiers
  from varjax.models import sampling
  table.check_out(args.out)
  if args.num_images is not None and args.num_images < 2:
    raise VarjaxError(f"--num-images must be >= 2, got {args.num_images}")
  if args.batch_size < 1:
    raise VarjaxError(f"--batch-size must be >= 1, got {args.batch_size}")
  if args.fd_bootstrap < 0:
    raise VarjaxError(f"--fd-bootstrap must be >= 0, got {args.fd_bootstrap}")
  if not 0 < args.coverage_threshold <= 1:
    raise VarjaxError(f"--coverage-threshold must be in (0, 1], got {args.coverage_threshold}")
  for k in args.best_of:
    if k < 1:
      raise VarjaxError(f"--best-of must be >= 1 (samples per image), got {k}")
  runs = [r for r in args.runs.split(",") if r]
  configs = table.configurations(runs, args.refiner, args.switch_scale, args.best_of)
  table.check(configs, args.verifier)
  protocol = sampling.SamplingProtocol(cfg=args.cfg, top_k=args.top_k, top_p=args.top_p,
                                       seed=args.seed)
  network = _network(args)
  num = args.num_images or (DEFAULT_SAMPLES_FID if network.metric == "fid"
                            else DEFAULT_SAMPLES_FD)
  verifier = verifier_flops = None
  if args.best_of:
    verifier = verifiers.ClassConfidence(args.verifier)
    verifier_flops = verifier.flops_per_image()
  rows, setups = [], {}
  for c in progress.bar(configs, desc="configurations", unit="config",
                        enabled=None if len(configs) > 1 else False):
    rows.append(table.measure(
        c, network, num_images=num, batch_size=args.batch_size, protocol=protocol,
        tokenizer_dir=args.tokenizer, reference_split=args.reference_split,
        data_dir=args.data_dir, cache_dir=args.stats_dir, verifier=verifier,
        verifier_flops=verifier_flops, coverage_threshold=args.coverage_threshold,
        fd_bootstrap=args.fd_bootstrap, setups=setups))
    r = rows[-1]
    interval = ("" if r["quality_low"] is None
                else f" [{r['quality_low']:.4g}, {r['quality_high']:.4g}]")
    print(f"{r['config']:<28} {r['metric']} {r['quality']:.4g}{interval}  "
          f"{r['images_per_s']:.4g} images/s  {r['sampling_flops_per_image']:.4g} sampling "
          f"FLOPs/image" + (f"  verifier score {r['verifier_mean_score']:.3f}"
                            if r["verifier_mean_score"] is not None else ""), flush=True)
    table.write_table(rows, args.out)  # after every row: an interrupted table keeps its rows
  print(f"{len(rows)} configurations, {num} images each -> {args.out} (columns: docs/eval.md)")


def _cmd_stats(args) -> None:
  from varjax.data import sources
  from varjax.eval import reference
  network = _network(args)
  resolution = args.resolution or network.resolution or _dataset_resolution(args)
  stats, path, cached = reference.reference_stats(
      network, args.dataset, args.split, resolution, args.data_dir, args.stats_dir,
      force=args.force)
  print(f"{sources.resolve_name(args.dataset)}[{args.split}] {resolution}px, {network.name}: "
        f"{stats.count} images, {stats.dim}-d features -> {path}"
        + (" (cached)" if cached else ""))
  if args.against:
    other, other_path, _ = reference.reference_stats(
        network, args.dataset, args.against, resolution, args.data_dir, args.stats_dir)
    print(f"{network.metric}({args.split} vs {args.against}) = {stats.distance(other):.4f}  "
          f"(the distance between two samples of the data itself; {other_path})")


def _dataset_resolution(args) -> int:
  from varjax.data import sources
  shape = sources.get_builder(args.dataset, args.data_dir).info.features["image"].shape
  if shape[0] is None or shape[0] != shape[1]:
    raise VarjaxError(f"{args.dataset} images have no fixed square size {shape}; pass "
                      "--resolution")
  return int(shape[0])


def _widths(text: str) -> tuple[int, ...]:
  try:
    widths = tuple(int(w) for w in text.split(","))
  except ValueError:
    widths = ()
  if not widths or min(widths) < 1:
    raise argparse.ArgumentTypeError(f"expected positive channel counts like 16,32,64, got "
                                     f"{text!r}")
  return widths


def _cmd_features_train(args) -> None:
  from varjax.data import sources
  from varjax.eval import features, reference
  resolution = args.resolution or _dataset_resolution(args)
  label = sources.get_builder(args.dataset, args.data_dir).info.features["label"]
  name = args.name or features.default_name(args.dataset, resolution)
  train = reference.load_split_images(args.dataset, args.train_split, resolution,
                                      args.data_dir)
  val = reference.load_split_images(args.dataset, args.eval_split, resolution, args.data_dir)
  spec = features.train_cnn(*train, *val, args.out, name=name, dataset=args.dataset,
                            num_classes=label.num_classes, epochs=args.epochs,
                            batch_size=args.batch_size, seed=args.seed,
                            **({"widths": args.widths} if args.widths else {}))
  print(f"{name}: {spec['feature_dim']}-d features, {label.num_classes} classes, accuracy "
        f"{spec['train_accuracy']:.1%} train / {spec['val_accuracy']:.1%} "
        f"{args.eval_split} ({spec['train_seconds']} s) -> {args.out}")
  print(f"its distances are reported as fd_{name} (not FID)")


def _cmd_convert_inception(args) -> None:
  import jax
  from varjax.eval import inception
  from varjax.models import convert, store
  params = inception.convert_inception(convert.load_state_dict(args.checkpoint))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  store.save_params(params, args.out)
  print(f"{args.checkpoint} -> {args.out} (FID Inception, "
        f"{sum(v.size for v in jax.tree.leaves(params)):,} parameters, BatchNorm folded)")


def _add_protocol_args(parser) -> None:
  """The sampling protocol and reference flags shared by `eval fid` and `eval sampling`."""
  parser.add_argument("--batch-size", type=int, default=64, help="samples per sampling batch")
  parser.add_argument("--cfg", type=float, default=1.5, help="guidance at the last scale")
  parser.add_argument("--top-k", type=int, default=900, help="0 = off")
  parser.add_argument("--top-p", type=float, default=0.96, help="0 = off")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--reference-split", default=None,
                      help="data split of the reference statistics (default: data.train_split)")


def _add_network_args(parser: argparse.ArgumentParser) -> None:
  group = parser.add_mutually_exclusive_group(required=True)
  group.add_argument("--inception-weights", default=None, metavar="PATH",
                     help="FID Inception weights (from `varjax eval convert-inception`): fid")
  group.add_argument("--feature-net", default=None, metavar="DIR",
                     help="a trained feature network (`varjax eval features train`): fd_<name>")
  parser.add_argument("--feature-batch-size", type=int, default=64)
  parser.add_argument("--data-dir", default=None, help="default: the run's / $VARJAX_DATA_DIR")
  parser.add_argument("--stats-dir", default=None,
                      help="cache of reference statistics (default: DATA_DIR/fd_stats)")


def add_parser(commands) -> None:
  evaluate = commands.add_parser(
      "eval", help="sample quality: FID / fd_<network> of a run, feature networks"
  ).add_subparsers(dest="eval_command", required=True, metavar="ACTION")

  fid = evaluate.add_parser(
      "fid", help="sample a run, Fréchet distance to a data split -> the run's summary.json")
  fid.add_argument("--run", required=True, help="run (model) directory")
  fid.add_argument("--tokenizer", default=None,
                   help="tokenizer directory (default: the run's data.tokenizer)")
  _add_network_args(fid)
  fid.add_argument("--num-samples", type=int, default=None,
                   help=f"K (default: {DEFAULT_SAMPLES_FID:,} for fid, "
                        f"{DEFAULT_SAMPLES_FD:,} for fd_<network>)")
  _add_protocol_args(fid)
  fid.add_argument("--no-grid", action="store_true", help="no PNG grid of samples")
  fid.add_argument("--json", action="store_true")
  fid.set_defaults(func=_cmd_fid)

  samp = evaluate.add_parser(
      "sampling", help="fd/FID, images/s, wall time, memory and FLOPs of sampler "
                       "configurations -> a table (CSV/JSONL) that `analysis plan` reads")
  samp.add_argument("--runs", required=True, metavar="DIR[,DIR...]",
                    help="run (model) directories: each is sampled plainly, as the drafter of "
                         "every --refiner pair and best-of-K for every --best-of")
  samp.add_argument("--refiner", action="append", default=[], metavar="RUN",
                    help="collaborative decoding: the model that samples from --switch-scale "
                         "on (repeatable; paired with the --switch-scale in the same place)")
  samp.add_argument("--switch-scale", action="append", type=int, default=[], metavar="K",
                    help="the scales before K are drafted by the run (0..num_scales)")
  samp.add_argument("--best-of", action="append", type=int, default=[], metavar="K",
                    help="best-of-K search by --verifier (repeatable)")
  samp.add_argument("--verifier", default=None, metavar="DIR",
                    help="feature network whose class confidence scores best-of-K candidates")
  samp.add_argument("--coverage-threshold", type=float, default=0.5, metavar="T",
                    help="coverage = the fraction of images whose chosen score is >= T")
  samp.add_argument("--tokenizer", default=None,
                    help="tokenizer directory (default: each run's data.tokenizer)")
  _add_network_args(samp)
  samp.add_argument("--num-images", type=int, default=None,
                    help=f"samples per configuration (default: {DEFAULT_SAMPLES_FID:,} for "
                         f"fid, {DEFAULT_SAMPLES_FD:,} for fd_<network>)")
  _add_protocol_args(samp)
  samp.add_argument("--fd-bootstrap", type=int, default=20, metavar="B",
                    help="resamples of the sample set for the distance's 95%% interval (0: none)")
  samp.add_argument("--out", required=True, help="the table: FILE.csv or FILE.jsonl")
  samp.set_defaults(func=_cmd_sampling)

  stats = evaluate.add_parser(
      "stats", help="reference statistics of a data split (computed once, cached)")
  _add_network_args(stats)
  stats.add_argument("--dataset", default="embedded32")
  stats.add_argument("--split", default="train")
  stats.add_argument("--resolution", type=int, default=None,
                     help="default: the feature network's, else the dataset's image size")
  stats.add_argument("--against", default=None, metavar="SPLIT",
                     help="also print the distance to this split (e.g. validation)")
  stats.add_argument("--force", action="store_true", help="recompute even if cached")
  stats.set_defaults(func=_cmd_stats)

  feats = evaluate.add_parser("features", help="feature networks for fd_<name>"
                              ).add_subparsers(dest="features_command", required=True,
                                               metavar="ACTION")
  train = feats.add_parser("train", help="train the small CNN classifier on a dataset")
  train.add_argument("--out", required=True, help="feature-network directory to write")
  train.add_argument("--dataset", default="embedded32")
  train.add_argument("--data-dir", default=None, help="default: $VARJAX_DATA_DIR")
  train.add_argument("--train-split", default="train")
  train.add_argument("--eval-split", default="validation")
  train.add_argument("--resolution", type=int, default=None,
                     help="default: the dataset's image size")
  train.add_argument("--name", default=None, help="default: embed<res>cnn for the embedded "
                                                  "data; the metric is fd_<name>")
  train.add_argument("--epochs", type=int, default=5)
  train.add_argument("--batch-size", type=int, default=128)
  train.add_argument("--seed", type=int, default=0)
  train.add_argument("--widths", type=_widths, default=None, metavar="C,C,...",
                     help="channels of the CNN's stages (default 32,64,128; the feature "
                          "dimension is the last); another architecture makes a verifier "
                          "that is not the fd network")
  train.set_defaults(func=_cmd_features_train)

  conv = evaluate.add_parser(
      "convert-inception",
      help="pt_inception-2015-12-05-6726825d.pth (pytorch-fid) -> our Inception weights")
  conv.add_argument("--checkpoint", required=True,
                    help=".pth (needs the convert extra) or the state dict as .npz")
  conv.add_argument("--out", required=True, help="weights file to write (.msgpack)")
  conv.set_defaults(func=_cmd_convert_inception)
