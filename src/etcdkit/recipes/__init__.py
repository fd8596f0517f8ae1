"""Coordination recipes written only on the public client (typed against
:class:`etcdkit._surface.Etcd`), one recipe per module, as a user would write them.

Reach them through the client's factories (``etcd.semaphore(...)``, ``etcd.queue(...)``, ...)
or construct them with a client: ``Semaphore(etcd, name, permits)``.
"""
