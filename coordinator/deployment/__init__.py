"""Running the coordinator's side of a Flower deployment: certificates, SuperLink, app runs, the demo."""
