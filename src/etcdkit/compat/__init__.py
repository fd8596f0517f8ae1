"""Other libraries' APIs over etcdkit's public client, so that moving to etcdkit can start by
changing one import.

- :mod:`etcdkit.compat.etcd3`: python-etcd3 0.12's API (``import etcdkit.compat.etcd3 as
  etcd3``), on the threaded :class:`etcdkit.Client`.

Each is written on public names only (an import-linter contract checks it), as a user of
etcdkit would write it.
"""
