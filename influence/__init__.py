"""influence: pick the few training examples that matter for a target capability.

    from influence import load_pool, load_target, make_selector, select, write_selection
    pool = load_pool("alpaca")
    selection = select(pool, k=1000, selector=make_selector("longest"))
    write_selection(selection, "alpaca-longest.jsonl")
    run_selection(["alpaca"], 1000, "longest")   # what `influence select` runs: check, load, select, write
    select(pool, 1000, make_selector("bm25"), target=load_target("bbh"), algorithm=make_algorithm("round-robin"))
"""

__version__ = "0.1.0"

from influence.algorithms import ALGORITHMS, make_algorithm  # noqa: E402
from influence.data import Example, Pool, Target, load_heldout, load_pool, load_target  # noqa: E402
from influence.selection import Selection, run_selection, select, write_selection  # noqa: E402
from influence.selectors import SELECTORS, make_selector, register_selector  # noqa: E402

__all__ = ["__version__", "Example", "Pool", "Target", "load_pool", "load_target", "load_heldout", "Selection",
           "select", "write_selection", "run_selection", "SELECTORS", "make_selector", "register_selector",
           "ALGORITHMS", "make_algorithm"]
