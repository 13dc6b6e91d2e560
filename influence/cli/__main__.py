"""`python -m influence.cli`, e.g. under `torchrun --nproc_per_node N -m influence.cli featurize ...`."""

from influence.cli import main

main()
