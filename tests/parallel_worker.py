"""Run in a subprocess with 8 fake CPU devices (XLA_FLAGS set by the test): 5 training steps
of the real sharded step on several meshes and on one device; prints JSON with the losses,
the relative parameter differences and each mesh's per-parameter sharding dump.
`--attn IMPL` runs the meshes with that attention impl (the single-device reference stays
`xla`) and counts the shard_maps the kernels run under."""

import json
import sys

import jax
import numpy as np

from varjax.config import MeshConfig, ModelConfig, OptimConfig
from varjax.models.var import VAR
from varjax.parallel import mesh as mesh_lib, rules
from varjax.train import optimizer, step as step_lib

STEPS, BATCH = 5, 16


def main(meshes, accum_check: bool, attn: str = "xla") -> dict:
  # Width 384 (6 heads) and V 1024 make qkv, ada_lin, fc1, fc2 and the head larger than
  # 1 MiB, so the dump shows whether large matrices are really split.
  cfg = ModelConfig(depth=2, width=384, heads=6, patch_nums=(1, 2, 3, 4), vocab_size=1024,
                    latent_channels=8, num_classes=10, attn_impl="xla")
  model = VAR(cfg)
  mesh_model = VAR(ModelConfig(**{**cfg.__dict__, "attn_impl": attn}))
  optim = OptimConfig(peak_lr=1e-3, warmup_steps=2)
  tx, sched = optimizer.adamw(optim, 10, BATCH), optimizer.lr_schedule(optim, 10, BATCH)
  rng = np.random.default_rng(0)
  batches = [{"label": rng.integers(0, 10, BATCH).astype(np.int32),
              "x": rng.normal(size=(BATCH, cfg.num_tokens - 1, 8)).astype(np.float32),
              "target": rng.integers(0, 1024, (BATCH, cfg.num_tokens)).astype(np.int32)}
             for _ in range(STEPS)]

  def run(shape, model=model, accum=1):
    devices = jax.devices()[:int(np.prod(shape))]
    mesh = mesh_lib.make_mesh(MeshConfig(data=shape[0], fsdp=shape[1], tensor=shape[2]),
                              devices)
    _, shardings = step_lib.state_shardings(model, tx, 0, mesh)
    state = step_lib.init_state(model, tx, 0, mesh, shardings)
    train_step = step_lib.make_train_step(model, tx, sched, mesh, shardings, accum)
    losses, shard_maps = [], 0
    for b in batches:
      arrays = {k: jax.device_put(v, step_lib.batch_shardings(mesh)[k]) for k, v in b.items()}
      if not losses:
        with jax.set_mesh(mesh), rules.rules_context():
          shard_maps = str(train_step.jitted.trace(state, arrays).jaxpr).count("shard_map[")
      state, m = train_step(state, arrays)
      losses.append(float(m["loss"]))
    dump = rules.sharding_report(state["params"], shardings["params"])
    return losses, jax.device_get(state["params"]), dump, shard_maps

  def rel(a_tree, b_tree):
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(a_tree)])
    b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(b_tree)])
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))

  ref_losses, ref_params, _, _ = run((1, 1, 1))
  out = {"single": ref_losses, "meshes": {}}
  for shape in meshes:
    losses, params, dump, shard_maps = run(shape, mesh_model)
    out["meshes"][",".join(map(str, shape))] = {
        "losses": losses, "param_rel_diff": rel(params, ref_params), "dump": dump,
        "shard_maps": shard_maps,
        "devices": [len(set(d for d in jax.devices()[:int(np.prod(shape))]))]}
  if accum_check:
    # Without dropout and label dropping, 2 micro-batches must equal the full batch.
    det = VAR(ModelConfig(**{**cfg.__dict__, "drop_path_rate": 0.0, "cond_drop_prob": 0.0}))
    l1, p1, _, _ = run((1, 1, 1), det)
    l2, p2, _, _ = run((2, 1, 1), det, accum=2)
    out["accum"] = {"losses_1": l1, "losses_2": l2, "param_rel_diff": rel(p2, p1)}
  return out


if __name__ == "__main__":
  meshes = [tuple(int(v) for v in m.split(",")) for m in sys.argv[1].split(";")]
  attn = sys.argv[sys.argv.index("--attn") + 1] if "--attn" in sys.argv else "xla"
  print(json.dumps(main(meshes, "--accum" in sys.argv, attn)))
