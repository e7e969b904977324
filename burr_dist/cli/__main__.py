"""``python -m burr_dist.cli``: the same as the ``burr-dist`` command."""

from burr_dist.cli import main

main()
