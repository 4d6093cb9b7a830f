"""`python -m bench ...`"""

from bench.cli import main

if __name__ == "__main__":  # guard: LLM backends may spawn worker processes
    raise SystemExit(main())
