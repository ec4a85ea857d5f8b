"""Jobs, schedules and sensors that run the pipeline without a person."""
