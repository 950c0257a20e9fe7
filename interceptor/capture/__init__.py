"""Flow capture: the on-disk store and the addon that feeds it."""
