"""Infrastructure the other subjects share: atomic writes, input limits, the allocator, environment facts."""
