"""Runs in the flashbax test environment (.venv-flashbax), not in the project's: writes and reads
vaults with the real flashbax library, exchanging arrays with the tests as .npz files (no pickles).

    vault_tool.py write VAULTS_DIR NAME UID=ARRAYS.npz ...  # vaults NAME/UID, one per .npz
    vault_tool.py read VAULTS_DIR NAME UID OUT.npz          # every leaf, as flashbax reads it

In ARRAYS.npz the keys are leaf paths (`observations`, `infos.legals`, ...), each [T, ...]; the
vault gets them time-major with batch size 1, as OG-MARL's recorder writes them.
"""

import sys

import flashbax as fbx
import jax
import jax.numpy as jnp
import numpy as np
from flashbax.vault import Vault


def nest(flat):
    out = {}
    for name, value in flat.items():
        node = out
        *parents, last = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def write(vaults_dir, name, *pairs):
    for pair in pairs:
        uid, arrays_path = pair.split("=", 1)
        write_one(arrays_path, vaults_dir, name, uid)


def write_one(arrays_path, vaults_dir, name, uid):
    with np.load(arrays_path, allow_pickle=False) as data:
        flat = {key: data[key] for key in data.files}
    steps = len(next(iter(flat.values())))
    experience = nest({key: jnp.asarray(value) for key, value in flat.items()})
    buffer = fbx.make_flat_buffer(
        max_length=steps + 1, min_length=1, sample_batch_size=1, add_sequences=True, add_batch_size=None
    )
    state = buffer.init(jax.tree_util.tree_map(lambda x: x[0], experience))
    state = buffer.add(state, experience)
    vault = Vault(name, experience_structure=state.experience, rel_dir=vaults_dir, vault_uid=uid)
    written = vault.write(state)
    print(f"flashbax wrote {written} steps")


def read(vaults_dir, name, uid, out_path):
    vault = Vault(name, rel_dir=vaults_dir, vault_uid=uid)
    experience = vault.read().experience
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(experience)[0]:
        key = ".".join(str(getattr(p, "key", getattr(p, "name", p))) for p in path)
        flat[key] = np.asarray(leaf)[0]
    np.savez(out_path, **flat)
    print(f"flashbax read {vault.vault_index} steps")


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    {"write": write, "read": read}[command](*rest)
