"""The threaded face: ``portal`` (one private event-loop thread per client), ``twin`` (the one
generic wrapper every blocking twin is made with: ``Twin``, ``blocking``, ``blocking_read``,
``mirror``), and the twins of the client (``client``), its locks and elections (``locks``) and its
administration (``admin``). The recipes' own twins (``SyncSemaphore``...) are made with ``twin``
beside their recipe.
"""
