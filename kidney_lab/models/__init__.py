"""Model builders and the registry that is the single source of model facts."""
