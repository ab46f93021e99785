"""One router per resource: search, predict, candidates, objects, info, health, pages."""
