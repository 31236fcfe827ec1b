"""Fraud models behind one interface: XGBoost, a PyTorch network, and a logistic baseline."""
