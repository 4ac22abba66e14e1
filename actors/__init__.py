"""Acting: exploration schedules, sequential exploration, the actor loop, the evaluator, the weight client."""
