"""The names of ReXMoE's expert pools and progressive-scaling-routing schedules, importable without torch so
that the LM testbed's config (and the command line) can offer them before anything heavy loads."""

POOL_MODES = ("local", "group", "sliding")
PSR_SCHEDULES = ("none", "linear", "step")
