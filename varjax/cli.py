"""The `varjax` command. Each subcommand is one function; user mistakes exit 2 with one line."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
import warnings

from varjax import hostmem
from varjax.errors import Preempted, VarjaxError


def _cmd_data_build(args) -> None:
  from varjax.data import sources
  start = time.time()
  builder = sources.build_dataset(args.dataset, args.data_dir, args.manual_dir, args.force)
  splits = {name: info.num_examples for name, info in builder.info.splits.items()}
  print(f"{sources.resolve_name(args.dataset)} ready in {builder.data_dir} "
        f"({', '.join(f'{k}: {v}' for k, v in splits.items())}; {time.time() - start:.1f} s)")


def _cmd_data_info(args) -> None:
  from varjax.data import sources
  builder = sources.get_builder(args.dataset, args.data_dir)
  info = {
      "dataset": sources.resolve_name(args.dataset),
      "data_dir": str(builder.data_dir),
      "prepared": builder.is_prepared(),
  }
  if builder.is_prepared():
    info["splits"] = {k: v.num_examples for k, v in builder.info.splits.items()}
    info["features"] = str(builder.info.features)
  print(json.dumps(info, indent=2) if args.json else
        "\n".join(f"{k}: {v}" for k, v in info.items()))


def _cmd_data_preview(args) -> None:
  from varjax.data import preview, sources
  _check_image_out(args.out)
  builder = sources.get_builder(args.dataset, args.data_dir)
  source = sources.open_split(args.dataset, args.split, args.data_dir)
  label = builder.info.features["label"]
  path = preview.preview_split(source, args.out, label.num_classes)
  print(f"wrote {path} (rows: {', '.join(label.names)})")


def _cmd_config_show(args) -> None:
  import yaml
  values = _model_config(args).to_dict()
  print(json.dumps(values, indent=2) if args.json else yaml.safe_dump(values, sort_keys=False),
        end="")


# Deeper models are refused: building one traces every block (var-d1024: 40 s on 2 cores,
# var-d100000 would take hours) and var-d1024 already has 7.9e13 parameters, 40,000 times
# VAR's largest (var-d30: 2.0e9).
MAX_DEPTH = 1024


def _model_config(args):
  """`--model var-dN` <- `--config FILE` <- dotted overrides -> Config."""
  from varjax import config
  from varjax.errors import ConfigError
  base = {"model": config.model_overrides(args.model)} if args.model else None
  cfg = config.load_config(args.config, args.overrides, base=base)
  if cfg.model.depth > MAX_DEPTH:
    raise ConfigError("model.depth", f"{cfg.model.depth} is over the limit of {MAX_DEPTH} "
                      f"(var-d{MAX_DEPTH} has 7.9e13 parameters; deeper ones take hours to build)")
  return cfg


def _check_image_out(path: str) -> None:
  """Refuses, before any work, an image path that cannot be written: its folder is a file,
  it is a folder, or its extension names no image format."""
  from PIL import Image
  if os.path.isdir(path):
    raise VarjaxError(f"cannot write {path}: it is a folder; give a file name such as "
                      f"{os.path.join(path, 'grid.png')}")
  if os.path.splitext(path)[1].lower() not in Image.registered_extensions():
    raise VarjaxError(f"cannot write {path}: not an image file name (use .png)")
  folder = os.path.dirname(os.path.abspath(path))
  existing = folder
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise VarjaxError(f"cannot write {path}: {existing} is a file, not a folder")
  if not os.access(existing, os.W_OK):
    raise VarjaxError(f"cannot write {path}: {existing} is not writable")


def _cmd_params(args) -> None:
  from varjax.models import var
  cfg = _model_config(args).model
  counts = var.count_params(cfg)
  if args.json:
    print(json.dumps({"model": cfg.name, "patch_nums": list(cfg.patch_nums),
                      "vocab_size": cfg.vocab_size, "num_classes": cfg.num_classes,
                      **counts}, indent=2))
    return
  print(f"{cfg.name}: width {cfg.resolved_width}, {cfg.resolved_heads} heads, "
        f"{cfg.num_tokens} tokens {list(cfg.patch_nums)}, V {cfg.vocab_size}, "
        f"{cfg.num_classes} classes")
  for key, value in counts.items():
    print(f"  {key:<14}{value:>16,}")


def _cmd_tokenizer_train(args) -> None:
  from varjax import config
  from varjax.train import tokenizer
  base = tokenizer.base_config(args.preset)
  for section, key, value in (("data", "dataset", args.dataset),
                              ("data", "data_dir", args.data_dir),
                              ("run", "out_dir", args.out_dir)):
    if value is not None:
      base[section][key] = value
  cfg = config.load_config(args.config, args.overrides, base=base)
  summary = tokenizer.train_tokenizer(cfg)
  print(tokenizer.format_summary(summary, cfg.model.patch_nums))
  print(f"run dir: {os.path.join(cfg.run.out_dir, cfg.run.name)}")


def _cmd_tokenizer_preview(args) -> None:
  import dataclasses
  import jax.numpy as jnp
  import numpy as np
  from varjax.data import pipeline, preview
  from varjax.models import store, vqvae
  _check_image_out(args.out)
  model, params, cfg = store.load_tokenizer(args.tokenizer)
  data = dataclasses.replace(cfg.data, global_batch_size=args.num,
                             **({"data_dir": args.data_dir} if args.data_dir else {}))
  images = pipeline.pipeline_from_config(data, args.split, seed=0, crop="center").batch(0)["image"]
  variables = {"params": params}
  indices = model.apply(variables, jnp.asarray(images), method=vqvae.VQVAE.img_to_indices)
  rows, lines = [images], []
  for k in range(1, len(indices) + 1):
    f_hat = model.apply(variables, indices[:k], method=vqvae.VQVAE.indices_to_fhat)
    recon = np.asarray(model.apply(variables, f_hat, method=vqvae.VQVAE.fhat_to_img))
    rows.append(recon)
    side = cfg.model.patch_nums[k - 1]
    lines.append(f"  scales 1..{k} (up to {side}x{side}): MSE {np.mean((recon - images) ** 2):.5f}")
  path = preview.save_image_grid(np.concatenate(rows), args.out, columns=args.num)
  print(f"wrote {path}: row 1 the {args.split} images, row k + 1 the reconstruction from "
        "the first k scales")
  print("\n".join(lines))


def _cmd_tokenize(args) -> None:
  from varjax.data import tokens
  meta = tokens.tokenize_split(args.tokenizer, args.split, args.out, dataset=args.dataset,
                               data_dir=args.data_dir, batch_size=args.batch_size,
                               chunk_size=args.chunk_size, num_examples=args.num_examples)
  print(f"{meta['dataset']}[{meta['split']}]: {meta['num_examples']} token pyramids "
        f"{meta['patch_nums']} (V {meta['vocab_size']}) in {args.out}")


def _cmd_convert(args) -> None:
  import jax
  from varjax import config
  from varjax import scales
  from varjax.models import convert, store
  patch_nums = scales.validate(args.patch_nums)
  state = convert.load_state_dict(args.checkpoint)
  if args.what == "var":
    model_cfg, params = convert.convert_var(state, patch_nums)
    cfg = config.replace(config.Config(), model=config.to_dict(model_cfg))
    params = params["params"]
  else:
    tok_cfg = config.load_config(args.config, args.overrides).tokenizer
    params = convert.convert_vqvae(state, tok_cfg, patch_nums)
    cfg = config.replace(config.Config(), tokenizer=config.to_dict(tok_cfg),
                         model={"patch_nums": list(patch_nums),
                                "vocab_size": tok_cfg.vocab_size,
                                "latent_channels": tok_cfg.latent_channels},
                         data={"resolution": patch_nums[-1] * tok_cfg.downsample})
  store.save_model_dir(args.out, cfg, params)
  print(f"{args.checkpoint} -> {args.out} ({args.what}, "
        f"{sum(v.size for v in jax.tree.leaves(params)):,} parameters)")


def _cmd_sample(args) -> None:
  import numpy as np
  from varjax import progress
  from varjax.data import preview
  from varjax.models import sampling, store
  if args.per_label < 1 or args.batch_size < 1:
    raise VarjaxError("--per-label and --batch-size must be >= 1")
  if (args.refiner is None) != (args.switch_scale is None):
    raise VarjaxError("collaborative sampling needs both --refiner DIR and --switch-scale K "
                      "(the drafter --var samples the K scales before it, the refiner the rest)")
  _check_search_flags(args)
  _check_image_out(args.out)
  if args.best_of is not None:
    from varjax.eval import verifiers
    from varjax.models import search
    search.check_search(args.best_of,
                        len(store.read_model_config(args.var, "VAR model").model.patch_nums),
                        args.search_scales or (), args.keep)
    verifier = verifiers.ClassConfidence(args.verifier)
  refiner = None
  if args.refiner:
    drafter_cfg = store.read_model_config(args.var, "VAR model")
    refiner_cfg = store.read_model_config(args.refiner, "VAR model")
    sampling.check_collaborative(drafter_cfg.model, refiner_cfg.model, args.switch_scale)
    from varjax.eval import fid
    fid.check_one_tokenizer(args.var, drafter_cfg, args.refiner, refiner_cfg)
  model, params, cfg = store.load_var(args.var)
  tokenizer, tok_params, tok_cfg = store.load_tokenizer(args.tokenizer)
  store.check_same_tokens(cfg, tok_cfg)
  if args.refiner:
    refiner_model, refiner_params, refiner_cfg = store.load_var(args.refiner)
    store.check_same_tokens(refiner_cfg, tok_cfg, f"the refiner {args.refiner}")
    refiner = (refiner_model, refiner_params)
  labels = np.repeat(np.asarray(args.labels, np.int64), args.per_label)
  protocol = sampling.SamplingProtocol(cfg=args.cfg, top_k=args.top_k, top_p=args.top_p,
                                       seed=args.seed)
  if args.best_of is not None:
    verifier.check(cfg.model.num_classes, tok_cfg.data.resolution)
  batches = range(0, len(labels), args.batch_size)
  images, results = [], []
  for i in progress.bar(batches, desc="sampling", unit="batch",
                        enabled=None if len(batches) > 1 else False):
    batch, b = labels[i:i + args.batch_size], i // args.batch_size
    if args.best_of is None:
      images.append(np.asarray(sampling.sample_images(
          model, params, tokenizer, {"params": tok_params}, batch, protocol, batch_index=b,
          refiner=refiner, switch=args.switch_scale)))
      continue
    if args.search_scales:
      result = search.scale_search(model, params, tokenizer, {"params": tok_params}, batch,
                                   args.best_of, verifier, args.search_scales, args.keep,
                                   protocol, batch_index=b)
    else:
      result = search.best_of_k(model, params, tokenizer, {"params": tok_params}, batch,
                                args.best_of, verifier, protocol, batch_index=b,
                                refiner=refiner, switch=args.switch_scale)
    images.append(result.images)
    results.append(result)
  images = np.concatenate(images) * 2 - 1
  search_record = None
  if results:
    scores = np.concatenate([r.scores for r in results])
    candidates = np.concatenate([r.candidate_scores for r in results])
    search_record = {
        "method": "scale_wise" if args.search_scales else "best_of_k", "k": args.best_of,
        **({"select_at": args.search_scales, "keep": args.keep} if args.search_scales else {}),
        "verifier": verifier.name, "verifier_dir": args.verifier,
        "sampling_flops_per_image": results[0].flops_per_image,
        "verifier_calls_per_image": results[0].verifier_calls,
        "scores": scores.tolist(), "candidate_scores": candidates.tolist()}
  path = preview.save_image_grid(images, args.out, columns=args.per_label)
  with open(os.path.splitext(path)[0] + ".json", "w") as f:
    json.dump({"var": args.var, "tokenizer": args.tokenizer, "labels": labels.tolist(),
               **vars(protocol),
               **({"refiner": args.refiner, "switch_scale": args.switch_scale}
                  if refiner else {}),
               **({"search": search_record} if search_record else {})}, f, indent=2)
  print(f"wrote {path} ({len(labels)} samples, one row per label; protocol in "
        f"{os.path.splitext(path)[0]}.json)")
  if search_record:
    what = (f"scale-wise search (keep {args.keep} of {args.best_of} after scales "
            f"{','.join(map(str, args.search_scales))})" if args.search_scales
            else f"best of {args.best_of}")
    print(f"{what} by {verifier.name}: chosen mean score {scores.mean():.4f}, all candidates' "
          f"{candidates.mean():.4f}; {search_record['sampling_flops_per_image']:.4g} sampling "
          f"FLOPs per image ({args.best_of} samples), "
          f"{search_record['verifier_calls_per_image']} verifier calls per image")


def _check_search_flags(args) -> None:
  """Search flags are refused together before any model is read."""
  if args.best_of is None:
    for flag, value in (("--verifier", args.verifier), ("--search-scales", args.search_scales),
                        ("--keep", None if args.keep == 1 else args.keep)):
      if value is not None:
        raise VarjaxError(f"{flag} is a search option: add --best-of K")
    return
  if args.best_of < 1:
    raise VarjaxError(f"--best-of must be >= 1 (samples per image), got {args.best_of}")
  if not args.verifier:
    raise VarjaxError("--best-of needs --verifier DIR (a feature network: `varjax eval "
                      "features train`), whose class confidence scores the samples")
  if args.search_scales and args.refiner:
    raise VarjaxError("scale-wise search (--search-scales) samples with one model; with "
                      "--refiner use best-of-K (drop --search-scales)")


def _cmd_train(args) -> None:
  from varjax.parallel import distributed
  distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  from varjax.kernels import attention
  from varjax.train import loop
  cfg = _model_config(args)
  attention.resolve_impl(cfg.model.attn_impl, cfg.model.dtype)  # cudnn without a GPU: now
  summary = loop.train(cfg, progress=None if args.progress == "auto" else args.progress == "on")
  print(f"{cfg.run.name}: eval loss {summary['loss']:.4f}, token error "
        f"{summary['token_error']:.2f}% after {summary['steps']} steps "
        f"({summary['tokens']:,} tokens, {summary['flops_exact']:.3g} FLOPs; "
        f"{summary['train_time_s']:.0f} s training)")


def _cmd_flops(args) -> None:
  from varjax.train import flops
  if args.sample:
    return _cmd_sampling_flops(args)
  for flag, value in (("--refiner", args.refiner), ("--switch-scale", args.switch_scale),
                      ("--cfg", args.cfg or None), ("--batch", None if args.batch == 1 else 1)):
    if value is not None:
      raise VarjaxError(f"{flag} counts sampling: add --sample")
  cfg = _model_config(args).model
  counts = flops.training_flops(cfg)
  if args.json:
    print(json.dumps({"model": cfg.name, "patch_nums": list(cfg.patch_nums),
                      "per_image": counts}, indent=2))
    return
  print(f"{cfg.name}: training FLOPs per image ({cfg.num_tokens} tokens "
        f"{list(cfg.patch_nums)}, attention density {counts['attention_density']:.3f})")
  for key in ("word_embed", "blocks_matmul", "attention", "head", "adaln", "total"):
    print(f"  {key:<14}{counts[key]:>22,.0f}")
  print(f"  {'6ND':<14}{counts['6nd']:>22,.0f}  ({counts['6nd'] / counts['total']:.3f} x exact)")
  print(f"  {'6ND no head':<14}{counts['6nd_no_head']:>22,.0f}  "
        f"({counts['6nd_no_head'] / counts['total']:.3f} x exact)")


def _cmd_sampling_flops(args) -> None:
  import argparse as argparse_lib
  from varjax.train import flops
  if args.cfg < 0 or args.batch < 1:
    raise VarjaxError(f"--cfg must be >= 0 and --batch >= 1, got {args.cfg} and {args.batch}")
  if args.switch_scale is not None and args.refiner is None:
    raise VarjaxError("--switch-scale needs --refiner MODEL (the model that samples from k on)")
  cfg = _model_config(args).model
  refiner = None
  if args.refiner:
    refiner = _model_config(argparse_lib.Namespace(**{**vars(args), "model": args.refiner})).model
  guided = args.cfg > 0
  cost = flops.sampling_cost(cfg, guided=guided, batch=args.batch)
  table = None
  if refiner is not None:
    switches = args.switch_scale
    for k in switches or []:
      from varjax.models import sampling
      sampling.check_collaborative(cfg, refiner, k)
    table = flops.collaborative_table(cfg, refiner, guided, switches)
  rows = f"{args.batch} image{'s' if args.batch > 1 else ''}" + (", x2 rows for guidance"
                                                                 if guided else "")
  if args.json:
    print(json.dumps({"model": cfg.name, "patch_nums": list(cfg.patch_nums), "dtype": cfg.dtype,
                      "cfg": args.cfg, "sampling": cost,
                      **({"refiner": refiner.name, "collaborative": table} if table else {})},
                     indent=2))
    return
  print(f"{cfg.name}: sampling FLOPs per image ({cfg.num_tokens} tokens {list(cfg.patch_nums)}, "
        f"{'guidance: batch doubled' if guided else 'no guidance'}) and KV cache ({cfg.dtype}, "
        f"{rows})")
  print(f"  {'scale':>5} {'side':>4} {'tokens':>6} {'cached':>6} {'FLOPs':>20} {'KV cache MB':>12}")
  for s in cost["steps"]:
    print(f"  {s['scale']:>5} {s['side']:>4} {s['tokens']:>6} {s['cached_tokens']:>6} "
          f"{s['flops']:>20,} {s['kv_cache_bytes'] / 1e6:>12.1f}")
  print(f"  total {cost['total']:,} FLOPs per image; KV cache peak "
        f"{cost['kv_cache_peak_bytes']:,} bytes ({cost['kv_cache_peak_bytes'] / 1e6:.1f} MB)")
  if table:
    print(f"collaborative: {cfg.name} drafts the k scales before the switch, {refiner.name} "
          "prefills its cache over them and samples the rest")
    print(f"  {'k':>3} {'drafted':>7} {'FLOPs':>20} {'speed-up':>8} {'no prefill':>10} "
          f"{'param bound':>11} {'KV peak MB':>10}")
    for r in table:
      print(f"  {r['switch']:>3} {r['drafted_tokens']:>7} {r['flops']:>20,} "
            f"{r['speedup']:>7.2f}x {r['speedup_without_prefill']:>9.2f}x "
            f"{r['parameter_bound']:>10.2f}x {r['kv_cache_peak_bytes'] / 1e6:>10.1f}")


def _cmd_bench_train(args) -> None:
  from varjax.kernels import attention
  from varjax.train import bench
  attention.resolve_impl(args.attn_impl, args.dtype)
  if not args.batch or min(args.batch) < 1:
    raise VarjaxError(f"--batch must list batch sizes >= 1, got {args.batch}")
  result = bench.bench_train(args.model, args.patch_nums, args.batch, vocab_size=args.vocab,
                             steps=args.steps, attn_impl=args.attn_impl, dtype=args.dtype)
  print(json.dumps(result, indent=2) if args.json else bench.format_result(result))


def _int_list(text: str) -> list[int]:
  try:
    return [int(v) for v in text.replace(" ", "").split(",") if v]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _add_model_report(commands, name: str, func, help_text: str):
  """`varjax params` / `varjax flops`: a report on one model config."""
  sub = commands.add_parser(
      name, help=help_text,
      epilog="overrides: --section.key=value, e.g. --model.patch_nums=1,2,3,4")
  sub.add_argument("--model", default="var-d16", help="var-d<depth> (default: var-d16)")
  sub.add_argument("--config", default=None, help="YAML or JSON config file")
  sub.add_argument("--json", action="store_true")
  sub.set_defaults(func=func, takes_overrides=True)
  return sub


def build_parser() -> argparse.ArgumentParser:
  from varjax import config as config_lib, scales
  parser = argparse.ArgumentParser(
      prog="varjax", description="Scaling-law research on VAR image generators.")
  commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  data = commands.add_parser("data", help="build and inspect datasets").add_subparsers(
      dest="data_command", required=True, metavar="ACTION")
  build = data.add_parser("build", help="prepare a dataset once under the data dir")
  build.add_argument("--dataset", default="embedded32",
                     help="embedded32, embedded64 or a TFDS name (default: embedded32)")
  build.add_argument("--data-dir", default=None, help="default: $VARJAX_DATA_DIR")
  build.add_argument("--manual-dir", default=None,
                     help="downloaded files for datasets such as imagenet2012")
  build.add_argument("--force", action="store_true", help="rebuild even if prepared")
  build.set_defaults(func=_cmd_data_build)
  info = data.add_parser("info", help="where a dataset lives and its splits")
  info.add_argument("--dataset", default="embedded32")
  info.add_argument("--data-dir", default=None)
  info.add_argument("--json", action="store_true")
  info.set_defaults(func=_cmd_data_info)

  preview = data.add_parser("preview", help="PNG grid of examples, one row per class")
  preview.add_argument("--dataset", default="embedded32")
  preview.add_argument("--data-dir", default=None)
  preview.add_argument("--split", default="train")
  preview.add_argument("--out", default="reports/demo/dataset.png")
  preview.set_defaults(func=_cmd_data_preview)

  cfg = commands.add_parser("config", help="show the resolved config").add_subparsers(
      dest="config_command", required=True, metavar="ACTION")
  show = cfg.add_parser("show", help="defaults <- --model <- --config FILE <- overrides",
                        epilog="overrides: --section.key=value, e.g. --model.depth=4")
  show.add_argument("--config", default=None, help="YAML or JSON config file")
  show.add_argument("--model", default=None, help="model name, e.g. var-d16")
  show.add_argument("--json", action="store_true")
  show.set_defaults(func=_cmd_config_show, takes_overrides=True)

  _add_model_report(commands, "params", _cmd_params,
                    "parameter count of a VAR model, total and by group")

  tok = commands.add_parser("tokenizer", help="train the multi-scale VQ tokenizer"
                            ).add_subparsers(dest="tokenizer_command", required=True,
                                             metavar="ACTION")
  tok_train = tok.add_parser(
      "train", help="preset <- --config FILE <- overrides; prints reconstruction and usage",
      epilog="overrides: --section.key=value, e.g. --run.steps=100 --tokenizer.vocab_size=1024")
  tok_train.add_argument("--preset", default="vqvae-tiny32",
                         help="vqvae-tiny32 (default), vqvae-tiny64 or vqvae-var")
  tok_train.add_argument("--config", default=None, help="YAML or JSON config file")
  tok_train.add_argument("--dataset", default=None, help="default: the preset's dataset")
  tok_train.add_argument("--data-dir", default=None, help="default: $VARJAX_DATA_DIR")
  tok_train.add_argument("--out-dir", default=None, help="runs go to OUT_DIR/run.name")
  tok_train.set_defaults(func=_cmd_tokenizer_train, takes_overrides=True)
  tok_preview = tok.add_parser(
      "preview", help="PNG: images and their reconstructions from the first k scales")
  tok_preview.add_argument("--tokenizer", required=True, help="a tokenizer directory")
  tok_preview.add_argument("--split", default="validation")
  tok_preview.add_argument("--num", type=int, default=8, help="images (columns)")
  tok_preview.add_argument("--data-dir", default=None, help="default: the tokenizer's")
  tok_preview.add_argument("--out", default="reports/demo/tokenizer.png")
  tok_preview.set_defaults(func=_cmd_tokenizer_preview)

  tokenize = commands.add_parser(
      "tokenize", help="encode a split into token pyramids on disk (resumable)")
  tokenize.add_argument("--tokenizer", required=True, help="a tokenizer run directory")
  tokenize.add_argument("--split", default="train",
                        help="a split of the dataset; the embedded datasets also have `stream`, "
                             "unlimited distinct crops (needs --num-examples)")
  tokenize.add_argument("--num-examples", type=int, default=None,
                        help="encode only the first K examples of the split")
  tokenize.add_argument("--out", required=True, help="output directory")
  tokenize.add_argument("--dataset", default=None, help="default: the tokenizer's dataset")
  tokenize.add_argument("--data-dir", default=None, help="default: the tokenizer's data dir")
  tokenize.add_argument("--batch-size", type=int, default=256)
  tokenize.add_argument("--chunk-size", type=int, default=2048,
                        help="examples per resumable chunk")
  tokenize.set_defaults(func=_cmd_tokenize)

  conv = commands.add_parser(
      "convert", help="official PyTorch VAR / VQVAE checkpoint -> a model directory",
      epilog="vqvae: the tokenizer config comes from --config / --tokenizer.KEY=VALUE "
             "(default: VAR's ch 160, V 4096, z 32)")
  conv.add_argument("what", choices=("var", "vqvae"))
  conv.add_argument("--checkpoint", required=True, help=".pth (needs the convert extra) or .npz")
  conv.add_argument("--out", required=True, help="model directory to write")
  conv.add_argument("--patch-nums", type=_int_list, default=list(scales.SCHEDULES["256"]),
                    help="scale schedule (default: VAR's 256 px)")
  conv.add_argument("--config", default=None, help="YAML or JSON config file")
  conv.set_defaults(func=_cmd_convert, takes_overrides=True)

  sample = commands.add_parser("sample", help="class-conditional samples as a PNG grid")
  sample.add_argument("--var", required=True, help="VAR model directory")
  sample.add_argument("--tokenizer", required=True, help="tokenizer directory")
  sample.add_argument("--labels", type=_int_list, default=[0], help="e.g. 0,1,2")
  sample.add_argument("--per-label", type=int, default=8)
  sample.add_argument("--cfg", type=float, default=1.5, help="guidance at the last scale")
  sample.add_argument("--top-k", type=int, default=900, help="0 = off")
  sample.add_argument("--top-p", type=float, default=0.96, help="0 = off")
  sample.add_argument("--seed", type=int, default=0)
  sample.add_argument("--batch-size", type=int, default=32)
  sample.add_argument("--out", default="samples.png")
  sample.add_argument("--refiner", default=None,
                      help="collaborative sampling: a second VAR model directory (same "
                           "tokenizer and schedule) that samples from --switch-scale on")
  sample.add_argument("--switch-scale", type=int, default=None,
                      help="K: --var drafts the K scales before it, --refiner builds its KV "
                           "cache from them (a prefill) and samples the rest")
  sample.add_argument("--best-of", type=int, default=None,
                      help="search: K samples per image, the best by --verifier is kept")
  sample.add_argument("--verifier", default=None,
                      help="feature-network directory; its class confidence scores samples")
  sample.add_argument("--search-scales", type=_int_list, default=None,
                      help="scale-wise search: after these scales keep the best --keep of the "
                           "K partial samples and resample from them (e.g. 2,5)")
  sample.add_argument("--keep", type=int, default=1,
                      help="candidates kept per image at each --search-scales scale")
  sample.set_defaults(func=_cmd_sample)
  train = commands.add_parser(
      "train", help="one VAR training run into run.out_dir/run.name (resumable)",
      epilog="overrides: --section.key=value, e.g. --model.depth=4 --data.tokens=DIR "
             "--run.steps=200 --mesh.data=-1 --mesh.tensor=2")
  train.add_argument("--config", default=None, help="YAML or JSON config file")
  train.add_argument("--model", default=None, help="model name, e.g. var-d4")
  train.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                     help="progress bar (auto: when stderr is a terminal)")
  train.add_argument("--coordinator", default=None,
                     help="multi-process: HOST:PORT of process 0 (TPU pods: not needed)")
  train.add_argument("--num-processes", type=int, default=None)
  train.add_argument("--process-id", type=int, default=None)
  train.set_defaults(func=_cmd_train, takes_overrides=True)

  flops_cmd = _add_model_report(
      commands, "flops", _cmd_flops, "training FLOPs per image: exact count and 6ND side by "
      "side; --sample: sampling FLOPs per image and KV-cache bytes, per scale")
  flops_cmd.add_argument("--sample", action="store_true",
                         help="count sampling (KV cache, scale by scale) instead of training")
  flops_cmd.add_argument("--cfg", type=float, default=0.0,
                         help="with --sample: guidance > 0 doubles the batch (default 0: none)")
  flops_cmd.add_argument("--batch", type=int, default=1,
                         help="with --sample: images sampled together, for the KV bytes")
  flops_cmd.add_argument("--refiner", default=None,
                         help="with --sample: var-d<depth> refining after the switch scale "
                              "(collaborative sampling; the overrides apply to both models)")
  flops_cmd.add_argument("--switch-scale", type=_int_list, default=None,
                         help="with --refiner: switch scales k to show (default: 0..num scales)")

  bench = commands.add_parser("bench", help="throughput benchmarks").add_subparsers(
      dest="bench_command", required=True, metavar="WHAT")
  bench_train = bench.add_parser(
      "train", help="full training steps (forward, backward, AdamW): tokens/s and MFU "
                    "against the peak measured in the same run")
  bench_train.add_argument("--model", default="var-d4")
  bench_train.add_argument("--patch-nums", type=_int_list, default=[1, 2, 3, 4, 5, 6, 8])
  bench_train.add_argument("--batch", type=_int_list, default=[32],
                           help="one batch, or several: the largest whose step fits in "
                                "device memory is timed")
  bench_train.add_argument("--vocab", type=int, default=4096)
  bench_train.add_argument("--steps", type=int, default=5, help="timed steps")
  bench_train.add_argument("--attn-impl", default="auto",
                           choices=config_lib.ATTN_IMPLS)
  bench_train.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  bench_train.add_argument("--json", action="store_true")
  bench_train.set_defaults(func=_cmd_bench_train)
  from varjax.eval import cli as eval_cli
  eval_cli.add_parser(commands)
  return parser


def main(argv: list[str] | None = None) -> int:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  hostmem.keep_freed_memory()  # before JAX starts threads: see varjax/hostmem.py
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  if extra and not getattr(args, "takes_overrides", False):
    parser.error(f"unrecognized arguments: {' '.join(extra)}")
  args.overrides = extra
  return run_command(args.func, args, "varjax")


def _quiet_library_logs() -> None:
  """Orbax and TFDS log routine notes through absl at WARNING ("directory is read only",
  ...); a command's own output and one-line errors are what a user should read."""
  import logging
  logging.getLogger("absl").setLevel(logging.ERROR)


def run_command(func, args, prog: str, interrupted: str = "interrupted") -> int:
  """Runs a command's function (its int result, or 0, is the exit status); a user mistake
  is one line on stderr and status 2, an environment failure (disk full, read-only files,
  out of memory) one line and status 1, SIGTERM or Ctrl-C after a checkpoint 143 / 130,
  a Ctrl-C elsewhere 130. Warnings print as one line each while the command runs."""
  _quiet_library_logs()
  def one_line(message, category, *rest, **kwargs):
    text = str(message).strip()
    print(f"{prog}: warning: {text.splitlines()[0] if text else category.__name__}",
          file=sys.stderr)

  with warnings.catch_warnings():  # restored afterwards: callers' warnings are untouched
    warnings.showwarning = one_line
    try:
      return func(args) or 0
    except Preempted as e:
      print(f"{prog}: {e}", file=sys.stderr)
      return e.exit_code
    except VarjaxError as e:
      print(f"{prog}: error: {e}", file=sys.stderr)
      return 2
    except KeyboardInterrupt:
      print(f"{prog}: {interrupted}", file=sys.stderr)
      return 130
    except Exception as e:  # noqa: BLE001 -- environment failures get one line, bugs a traceback
      message = environment_failure(e)
      if message is None:
        raise
      print(f"{prog}: error: {message}", file=sys.stderr)
      return 1


# errno of an OSError that the machine, not the program, caused.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                       errno.EROFS: "the file system is read-only",
                       errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                       errno.EFBIG: "the file is too large for this file system or limit"}


_TENSORSTORE_ERRNOS = {f"os_error_code='{code}'": (message, os.strerror(code))
                       for code, message in _ENVIRONMENT_ERRNOS.items()}


def environment_failure(error: BaseException) -> str | None:
  """One line for an error the environment caused (found anywhere in the chain of causes:
  orbax and TensorFlow wrap the OSError), or None for anything else."""
  seen, current = set(), error
  while current is not None and id(current) not in seen:
    seen.add(id(current))
    text = str(current)
    if isinstance(current, OSError) and current.errno in _ENVIRONMENT_ERRNOS:
      where = f" ({current.filename})" if current.filename else ""
      return (f"{_ENVIRONMENT_ERRNOS[current.errno]}{where}: {current.strerror}. Earlier "
              "checkpoints are intact (a checkpoint is written whole or not at all); fix it "
              "and rerun the same command to resume")
    for code, (message, strerror) in _TENSORSTORE_ERRNOS.items():
      if code in text:  # tensorstore (orbax's writer) reports errno only in its text
        return (f"{message}: {strerror} while saving ({text.splitlines()[0][:160]}). "
                "Earlier checkpoints are intact (a checkpoint is written whole or not at all); "
                "fix it and rerun the same command to resume")
    if ("RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()
        or isinstance(current, MemoryError)):
      first = next((line for line in text.splitlines()
                    if "RESOURCE_EXHAUSTED" in line or "out of memory" in line.lower()),
                   "out of memory")
      return (f"out of memory ({first.strip()[:160]}); lower data.global_batch_size, raise "
              "optim.grad_accum_steps, shard over more devices (mesh.fsdp) or use a smaller "
              "model")
    current = current.__cause__ or current.__context__
  return None


if __name__ == "__main__":
  sys.exit(main())
