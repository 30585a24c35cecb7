"""`python -m dccl_hf`: the `dccl-hf` command."""

from dccl_hf.cli import main

raise SystemExit(main())
