"""The notice every page and report that shows a model's output carries."""

NOTICE = "Research use only: not a medical device, not for diagnosis."
