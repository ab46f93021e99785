"""``specsearch demo``: the whole engine on the embedded default (see :mod:`.run`)."""

from specsearch.demo.run import DemoConfig, DemoResult, run_demo

__all__ = ["DemoConfig", "DemoResult", "run_demo"]
