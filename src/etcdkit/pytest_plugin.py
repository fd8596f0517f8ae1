"""etcdkit's pytest plugin, under the name it is installed as (the ``pytest11`` entry point
``etcdkit.pytest_plugin``): fixtures backed by real etcd processes, defined in
:mod:`etcdkit.testing.pytest_plugin` (see there for the list).

pytest loads it by itself once etcdkit is installed. Naming it too (``-p
etcdkit.pytest_plugin``, ``pytest_plugins = ["etcdkit.pytest_plugin"]``, or the module that
defines the fixtures) loads it once, whichever names are given; ``-p no:etcdkit.pytest_plugin``
turns it off.
"""

# pytest imports what a plugin lists here, once per name (a module registered under one name
# cannot be registered under another: this module only points to the one that defines them)
pytest_plugins = ["etcdkit.testing.pytest_plugin"]
