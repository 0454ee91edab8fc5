"""Sub-commands of the ``recbase`` console command, one module each (see :mod:`recbase.cli`).

Command modules import their stage lazily inside ``run`` so that ``recbase --help`` stays fast.
"""
