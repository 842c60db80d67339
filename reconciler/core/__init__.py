"""The pure core: observation types, plans and the planner. Nothing here does I/O."""
