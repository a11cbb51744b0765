"""Small real models the demo spec (model.yaml) builds: trained on datasets scikit-learn ships, with
fixed seeds and one thread, so every build converts the same model."""
