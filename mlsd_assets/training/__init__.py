"""Model training and ONNX export, tracked in MLflow."""
