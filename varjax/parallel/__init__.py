"""Device meshes, the logical-axis rules table, sharding helpers and multi-host start.

    mesh.py         make_mesh(MeshConfig): (data, fsdp, tensor) ICI x DCN, -1 filled in
    rules.py        RULES (logical axis -> mesh axes), shardings for params, state, batches
    distributed.py  jax.distributed.initialize from flags or the environment; per-process
                    slices of the global batch
"""
