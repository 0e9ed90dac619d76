"""``python -m lookahead.cli ...``: the same as the ``lookahead`` console script.

Example:
    python -m lookahead.cli solve --config tiny "What is 2+3?"
"""

from lookahead.cli import main

if __name__ == "__main__":
    main()
